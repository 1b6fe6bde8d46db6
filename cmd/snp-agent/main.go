// Command snp-agent runs inside a guest and answers attestation challenges with reports
// from the AMD Secure Processor.
//
// It serves the snpd guest-channel protocol (package agentproto) on the virtio-serial
// port named "org.snpd.agent.0" and, when the guest has a vsock device, on a vsock port
// (-vsock-port, default 5000). Reports come from go-sev-guest's QuoteProvider
// (configfs-tsm first, /dev/sev-guest otherwise); a guest with neither answers every
// challenge with the error "guest has no SEV-SNP report device".
//
// It also asks snpd, on the same channel, for the guest's own launch record (expected
// measurement, policy, host-data, ...) and the certificate chain snpd holds for it:
// `snp-agent record` prints the record (JSON) and `snp-agent chain` the chain (PEM),
// asking the running agent through its control socket (<state-dir>/control.sock, root
// only), which relays over the serial port, or over vsock to the host (CID 2) when
// -host-vsock-port is set. At start the agent asks for its record once and logs the
// expected measurement (on the console when it is init).
//
// Run as PID 1 (the init of a minimal initramfs), it first mounts /proc, /sys, /dev and
// configfs, loads the kernel modules listed one path per line in /etc/snp-agent/modules
// (with finit_module, in order), and powers the machine off if it ever has to stop.
//
// Build it static: CGO_ENABLED=0 go build ./cmd/snp-agent.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/client"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/snpd/snpd/snp/agentproto"
)

// PortName is the virtio-serial port name snpd gives the agent channel.
const PortName = "org.snpd.agent.0"

// modulesFile lists kernel modules to load when running as init.
const modulesFile = "/etc/snp-agent/modules"

// ErrNoDevice is the answer on a guest without SEV-SNP report support.
var ErrNoDevice = errors.New("guest has no SEV-SNP report device")

// version is snp-agent's version, set by make build (-ldflags -X main.version=...).
var version = "dev"

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	vsockPort := flag.Uint("vsock-port", 5000, "vsock port to listen on when the guest has a vsock device (0: none)")
	portPath := flag.String("port", "", "virtio-serial port device (default: the port named "+PortName+")")
	stateDir := flag.String("state-dir", "/run/snp-agent", "where the provisioned record and chain and the control socket are kept")
	hostVsock := flag.Uint("host-vsock-port", 0, "ask snpd over vsock on this host port when the serial port is not connected (0: serial only)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: snp-agent [flags]          serve attestation challenges\n"+
			"       snp-agent [flags] record   ask snpd for this guest's launch record (JSON)\n"+
			"       snp-agent [flags] chain    ask snpd for the VCEK/ASK/ARK chain it holds for this guest (PEM)\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *showVersion {
		fmt.Println("snp-agent " + version)
		return
	}
	log.SetFlags(0)
	log.SetPrefix("snp-agent: ")
	// As PID 1 the positional arguments are kernel command line leftovers (the EFI shell
	// passes the image path, "\vmlinuz"), never a subcommand.
	if flag.NArg() > 0 && os.Getpid() != 1 {
		os.Exit(ask(os.Stdout, os.Stderr, *stateDir, uint32(*hostVsock), flag.Args()))
	}
	a := &agent{src: &quoteSource{stateDir: *stateDir}, hostVsockPort: uint32(*hostVsock)}
	init1 := os.Getpid() == 1
	if init1 {
		setupInit()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	if err := a.serveControl(ctx, filepath.Join(*stateDir, controlName)); err != nil {
		log.Printf("control socket: %v", err)
	}
	go a.announceRecord(ctx)
	err := a.run(ctx, *portPath, uint32(*vsockPort))
	stop()
	if err != nil {
		log.Print(err)
	}
	if init1 {
		unix.Sync()
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}
	if err != nil {
		os.Exit(1)
	}
}

// quoteSource gets reports through go-sev-guest. The provider is looked up per request so
// a report device that appears after start (module loaded late) is found. It also keeps
// what snpd provisions in stateDir (record.json, chain.pem).
type quoteSource struct{ stateDir string }

// Provision implements agentproto.Provisioner: the files are replaced atomically.
func (q *quoteSource) Provision(p *agentproto.Provision) error {
	if err := os.MkdirAll(q.stateDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", q.stateDir, err)
	}
	for name, b := range map[string][]byte{"record.json": p.Record, "chain.pem": []byte(p.ChainPEM)} {
		tmp := filepath.Join(q.stateDir, "."+name+".tmp")
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
		if err := os.Rename(tmp, filepath.Join(q.stateDir, name)); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}
	return nil
}

func (*quoteSource) GetReport(reportData [64]byte) ([]byte, []byte, error) {
	if !hasReportDevice() {
		return nil, nil, ErrNoDevice
	}
	qp, err := client.GetQuoteProvider()
	if err != nil {
		return nil, nil, ErrNoDevice
	}
	raw, err := qp.GetRawQuote(reportData)
	if err != nil {
		return nil, nil, fmt.Errorf("getting report: %w", err)
	}
	if len(raw) < abi.ReportSize {
		return nil, nil, fmt.Errorf("getting report: device returned %d bytes, want at least %d", len(raw), abi.ReportSize)
	}
	return raw[:abi.ReportSize], raw[abi.ReportSize:], nil
}

// hasReportDevice is a cheap pre-check before go-sev-guest's probing (which creates a
// configfs-tsm entry): the tsm report directory or /dev/sev-guest must exist.
func hasReportDevice() bool {
	for _, p := range []string{"/sys/kernel/config/tsm/report", "/dev/sev-guest"} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

func (a *agent) run(ctx context.Context, portPath string, vsockPort uint32) error {
	src := a.src
	errc := make(chan error, 2)
	n := 0
	if vsockPort != 0 {
		if l, err := vsock.Listen(vsockPort, nil); err != nil {
			log.Printf("vsock: not serving: %v", err)
		} else {
			n++
			log.Printf("serving on vsock port %d", vsockPort)
			go func() { errc <- serveVsock(ctx, l, src) }()
			context.AfterFunc(ctx, func() { l.Close() })
		}
	}
	n++
	go func() { errc <- a.serveSerial(ctx, portPath) }()
	var first error
	for i := 0; i < n; i++ {
		if err := <-errc; err != nil && first == nil && ctx.Err() == nil {
			first = err
		}
	}
	return first
}

func serveVsock(ctx context.Context, l *vsock.Listener, src agentproto.ReportSource) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accepting vsock connection: %w", err)
		}
		go func() {
			defer c.Close()
			_ = agentproto.Serve(ctx, &timeoutConn{c}, src)
		}()
	}
}

// timeoutConn bounds each read of an idle vsock connection so a stalled host cannot pin a
// goroutine forever.
type timeoutConn struct{ net.Conn }

func (c *timeoutConn) Read(p []byte) (int, error) {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Minute))
	return c.Conn.Read(p)
}

// serveSerial serves the virtio-serial port. The port stays open across host
// disconnects: a read then returns EOF until snpd connects again, and closing the port
// instead would make the guest kernel discard a request that arrived meanwhile.
func (a *agent) serveSerial(ctx context.Context, portPath string) error {
	logged := false
	for ctx.Err() == nil {
		p := portPath
		if p == "" {
			p = findPort()
		}
		if p == "" {
			if !logged {
				log.Printf("waiting for virtio-serial port %s", PortName)
				logged = true
			}
			sleep(ctx, 500*time.Millisecond)
			continue
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("opening %s: %w", p, err)
		}
		log.Printf("serving on %s", p)
		stop := context.AfterFunc(ctx, func() { f.Close() })
		for ctx.Err() == nil {
			// One Conn per host connection: it answers snpd's challenges and carries
			// this guest's own requests (a.askHost) on the same stream.
			conn := agentproto.NewConn(f, agentproto.AgentHandler(a.src))
			a.host.Store(conn)
			err = conn.Run(ctx)
			a.host.CompareAndSwap(conn, nil)
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				sleep(ctx, 100*time.Millisecond) // no host connected: poll again
				continue
			}
			break
		}
		stop()
		f.Close()
		if ctx.Err() == nil {
			log.Printf("serial: %v; reopening", err)
			sleep(ctx, 200*time.Millisecond)
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// findPort returns the device of the port named PortName: the udev symlink if present,
// else the /sys/class/virtio-ports entry whose name matches (initramfs without udev).
func findPort() string {
	if _, err := os.Stat("/dev/virtio-ports/" + PortName); err == nil {
		return "/dev/virtio-ports/" + PortName
	}
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err == nil && strings.TrimSpace(string(b)) == PortName {
			return "/dev/" + filepath.Base(filepath.Dir(n))
		}
	}
	return ""
}

// setupInit prepares a bare initramfs: pseudo filesystems and kernel modules. Failures
// are logged, not fatal: the agent still answers (with an error) if it can reach a port.
func setupInit() {
	mounts := []struct{ src, dst, typ string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"configfs", "/sys/kernel/config", "configfs"},
	}
	for _, m := range mounts {
		_ = os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.ENOENT) {
			log.Printf("mounting %s: %v", m.dst, err)
		}
	}
	f, err := os.Open(modulesFile)
	if err != nil {
		return
	}
	defer f.Close()
	var pending []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		p := strings.TrimSpace(s.Text())
		if p != "" && !strings.HasPrefix(p, "#") {
			pending = append(pending, p)
		}
	}
	// Without modules.dep the order may be wrong: retry the modules that failed (a
	// missing dependency gives ENOENT, "Unknown symbol") until a round loads nothing.
	errs := map[string]error{}
	for len(pending) > 0 {
		var next []string
		for _, p := range pending {
			if err := loadModule(p); err != nil {
				errs[p] = err
				next = append(next, p)
			}
		}
		if len(next) == len(pending) {
			break
		}
		pending = next
	}
	for _, p := range pending {
		log.Printf("loading module %s: %v", p, errs[p])
	}
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}
