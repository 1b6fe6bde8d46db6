// Command snpd is the SEV-SNP host daemon: it launches measured confidential VMs under
// QEMU, keeps a durable record of every launch, serves its API on a unix socket and
// reattaches to running guests after a restart.
//
// Usage: snpd [--config PATH] [--state-dir DIR] [--runtime-dir DIR] [--debug] [--version]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon"
	"github.com/snpd/snpd/systemd"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// stdout is where --version prints (tests capture it).
var stdout io.Writer = os.Stdout

func run(args []string) int {
	fl := flag.NewFlagSet("snpd", flag.ContinueOnError)
	cfgPath := fl.String("config", config.DefaultConfigPath, "configuration file (TOML)")
	stateDir := fl.String("state-dir", "", "state directory (overrides state_dir)")
	runtimeDir := fl.String("runtime-dir", "", "runtime directory (overrides runtime_dir; the socket defaults to <runtime-dir>/snpd.sock)")
	debug := fl.Bool("debug", false, "log debug messages")
	showVersion := fl.Bool("version", false, "print the version and exit")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "snpd "+daemon.Version)
		return 0
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

	cfg, err := buildConfig(*cfgPath, *stateDir, *runtimeDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "snpd: %v\n", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := daemon.Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "snpd: %v\n", err)
		return 1
	}
	return 0
}

// buildConfig loads the configuration and applies the command-line overrides: relative
// flag paths are resolved against the working directory (those in the file against the
// file's directory), and an explicit runtime directory moves the default socket with it.
func buildConfig(cfgPath, stateDir, runtimeDir string) (*config.Daemon, error) {
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		return nil, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, fmt.Errorf("reading the working directory: %w", err)
	}
	if stateDir != "" {
		cfg.StateDir = stateDir
	}
	if runtimeDir != "" {
		cfg.RuntimeDir = runtimeDir
		if cfg.Socket == filepath.Join(config.DefaultRuntimeDir, config.DefaultSocketName) {
			cfg.Socket = ""
		}
	}
	cfg.ResolvePaths(cwd)
	cfg.SetDefaults()
	return cfg, nil
}

// loadConfig reads the configuration. A missing file is an error, at the default path
// too: snpd never runs on defaults by accident (they include no host policy).
func loadConfig(path string) (*config.Daemon, error) {
	cfg, err := config.LoadDaemon(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no configuration at %s: snpd does not start without one (make install puts a commented default in /etc/snpd/; see docs/configuration.md)", path)
	}
	return cfg, err
}
