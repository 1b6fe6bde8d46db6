// Command snpd is the SEV-SNP host daemon: it launches measured confidential VMs under
// QEMU, keeps a durable record of every launch, serves its API on a unix socket and
// reattaches to running guests after a restart.
//
// Usage: snpd [--config PATH] [--state-dir DIR] [--runtime-dir DIR]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon"
	"github.com/snpd/snpd/systemd"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fl := flag.NewFlagSet("snpd", flag.ContinueOnError)
	cfgPath := fl.String("config", config.DefaultConfigPath, "configuration file (TOML)")
	stateDir := fl.String("state-dir", "", "state directory (overrides state_dir)")
	runtimeDir := fl.String("runtime-dir", "", "runtime directory (overrides runtime_dir; the socket defaults to <runtime-dir>/snpd.sock)")
	debug := fl.Bool("debug", false, "log debug messages")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "snpd: unexpected argument %q\n", fl.Arg(0))
		return 2
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	slog.SetDefault(slog.New(systemd.NewLogHandler(os.Stderr, level)))

	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "snpd: %v\n", err)
		return 1
	}
	cwd, _ := os.Getwd()
	if *stateDir != "" {
		cfg.StateDir = *stateDir
	}
	if *runtimeDir != "" {
		cfg.RuntimeDir = *runtimeDir
		// An explicit runtime directory moves the socket too unless the config names one
		// outside the default location.
		if cfg.Socket == "" || cfg.Socket == config.DefaultRuntimeDir+"/"+config.DefaultSocketName {
			cfg.Socket = ""
		}
	}
	cfg.ResolvePaths(cwd)
	cfg.SetDefaults()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := daemon.Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "snpd: %v\n", err)
		return 1
	}
	return 0
}

// loadConfig reads the configuration; a missing file at the default path means all
// defaults (a missing explicit path is an error).
func loadConfig(path string) (*config.Daemon, error) {
	cfg, err := config.LoadDaemon(path)
	if errors.Is(err, fs.ErrNotExist) && path == config.DefaultConfigPath {
		return &config.Daemon{}, nil
	}
	return cfg, err
}
