package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/spf13/cobra"
)

// hookTimeout bounds the whole exchange with snpd: libvirt waits for the hook, and the
// hook must answer within 10 s.
var hookTimeout = 9 * time.Second

// hookName is the name the hook is installed under (/etc/libvirt/hooks/qemu.d/snpd).
const hookName = "snpd"

// hookStdinTimeout bounds reading the hook's stdin: libvirt writes the domain XML and
// closes it at once, so a stdin still open after this is not libvirt's.
var hookStdinTimeout = 3 * time.Second

// hookStdinMax bounds how much of stdin the hook drains (bytes); libvirt's XML is far
// smaller.
const hookStdinMax = 64 << 20

// readHookStdin reads stdin to its end within timeout, keeping the first keep bytes and
// discarding the rest, and returns what it kept and how many bytes there were. The hook
// always drains stdin this way before answering: libvirt writes the whole XML before it
// reads the hook's status, and a hook that exits with XML still unread gives it a broken
// pipe instead of the hook's answer. Reading stops with an error at hookStdinMax bytes,
// or at the timeout (a stdin that never closes; the blocked read ends with the process).
func readHookStdin(stdin io.Reader, keep int64, timeout time.Duration) ([]byte, int64, error) {
	type result struct {
		data  []byte
		total int64
		err   error
	}
	done := make(chan result, 1)
	go func() {
		var kept bytes.Buffer
		n, err := io.Copy(&kept, io.LimitReader(stdin, keep))
		if err == nil && n == keep {
			var rest int64
			rest, err = io.Copy(io.Discard, io.LimitReader(stdin, hookStdinMax-keep+1))
			n += rest
			if err == nil && n > hookStdinMax {
				err = fmt.Errorf("more than %d bytes on stdin", hookStdinMax)
			}
		}
		done <- result{kept.Bytes(), n, err}
	}()
	select {
	case r := <-done:
		return r.data, r.total, r.err
	case <-time.After(timeout):
		return nil, 0, fmt.Errorf("stdin did not end within %s (libvirt writes the domain XML and closes it)", timeout)
	}
}

func init() { addCommand(newLibvirtHookCmd) }

// commandArgs returns the arguments snpctl runs with, given its whole argv: invoked as
// hookName with arguments, as libvirt runs its hooks, `libvirt-hook -- ARGS...` ("--"
// keeps a domain name starting with "-" from being read as a flag); else argv[1:].
func commandArgs(argv []string) []string {
	if len(argv) > 1 && filepath.Base(argv[0]) == hookName {
		return append([]string{"libvirt-hook", "--"}, argv[1:]...)
	}
	return argv[1:]
}

func newLibvirtHookCmd() *cobra.Command {
	var failOpen bool
	var policyPath string
	cmd := &cobra.Command{
		Use:   "libvirt-hook DOMAIN OPERATION SUB-OPERATION [EXTRA]",
		Short: "libvirt qemu hook: refuse domains that break the host policy (install as /etc/libvirt/hooks/qemu.d/snpd)",
		Long: `Follows libvirt's qemu hook protocol (domain XML on stdin). On "prepare begin" it sends
the domain to snpd (POST /v1/libvirt/domains), which checks it against the host policy and
registers it, with its expected launch digest when it has <launchSecurity type='sev-snp'>
(any other domain is recorded as not confidential); violations are printed on stderr and
the hook exits 1, so libvirt refuses to start the domain. On "release end" it drops the
registration. Other operations exit 0 at once. If snpd cannot be reached the hook fails
closed unless --fail-open, SNPD_HOOK_FAIL_OPEN=1 or hook_fail_open = true in the
[libvirt] section of the host policy (libvirt clears the environment of hooks: the
policy file is the setting that reaches an installed hook). It never calls back into
libvirt.

Installed as /etc/libvirt/hooks/qemu.d/snpd (a copy of snpctl: make install-hook),
snpctl acts as this command by that name alone; restart libvirtd afterwards, it reads
its hooks at start.`,
		Example: `  # Install, then restart libvirtd (or virtqemud)
  install -D -m 0755 /usr/local/bin/snpctl /etc/libvirt/hooks/qemu.d/snpd

  # What libvirt runs when domain web is about to start; exit 1 lists the violations
  /etc/libvirt/hooks/qemu.d/snpd web prepare begin - < web.xml
  snpctl libvirt-hook web prepare begin - < web.xml

  # Against a snpd on another socket, letting domains start while it is down
  snpctl --socket /tmp/snpd-run/snpd.sock libvirt-hook --fail-open web prepare begin - < web.xml

  # Check a domain without a running snpd or libvirt
  snpctl policy check --libvirt-xml web.xml`,
		Args: cobra.RangeArgs(3, 4),
		RunE: func(cmd *cobra.Command, args []string) error {
			if os.Getenv("SNPD_HOOK_FAIL_OPEN") == "1" {
				failOpen = true
			}
			sock, _ := cmd.Flags().GetString("socket")
			sock = api.SocketFromEnv(sock)
			h := &libvirtHook{socket: sock, failOpen: failOpen, policyPath: policyPath, stderr: cmd.ErrOrStderr()}
			return h.run(cmd.Context(), args[0], args[1], args[2], cmd.InOrStdin())
		},
	}
	cmd.Flags().BoolVar(&failOpen, "fail-open", false, "let domains start when snpd cannot be reached (default: refuse)")
	cmd.Flags().StringVar(&policyPath, "policy", config.DefaultPolicyPath, "host policy file read for [libvirt] hook_fail_open when snpd cannot be reached")
	return cmd
}

type libvirtHook struct {
	socket     string
	failOpen   bool
	policyPath string
	stderr     io.Writer
}

// refuse prints msg (one line per entry) prefixed with the hook's name and returns the
// exit status that makes libvirt refuse the operation.
func (h *libvirtHook) refuse(lines ...string) error {
	for _, l := range lines {
		fmt.Fprintln(h.stderr, "snpd: "+l)
	}
	return exitError{code: 1}
}

func (h *libvirtHook) run(ctx context.Context, domain, op, subop string, stdin io.Reader) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, hookTimeout)
	defer cancel()
	switch {
	case op == "prepare" && subop == "begin":
		xml, total, err := readHookStdin(stdin, config.MaxLibvirtXMLSize+1, hookStdinTimeout)
		if err != nil {
			return h.refuse(fmt.Sprintf("refusing domain %s: reading its XML: %v", domain, err))
		}
		if total > config.MaxLibvirtXMLSize {
			return h.refuse(fmt.Sprintf("refusing domain %s: its XML is %d bytes, more than the %d allowed", domain, total, config.MaxLibvirtXMLSize))
		}
		// Map locally first: a domain snpd could not map is refused without asking it.
		if _, err := config.FromLibvirtXML(xml); err != nil {
			return h.refuse(fmt.Sprintf("refusing domain %s: %v", domain, oneLine(err)))
		}
		return h.register(ctx, domain, xml)
	case op == "release" && subop == "end":
		if _, _, err := readHookStdin(stdin, 0, hookStdinTimeout); err != nil {
			fmt.Fprintf(h.stderr, "snpd: releasing domain %s: %v\n", domain, err)
		}
		return h.release(ctx, domain)
	default:
		// Drain the XML libvirt writes so it never sees a broken pipe.
		if _, _, err := readHookStdin(stdin, 0, hookStdinTimeout); err != nil {
			fmt.Fprintf(h.stderr, "snpd: %s %s %s: %v\n", domain, op, subop, err)
		}
		return nil
	}
}

func (h *libvirtHook) client() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", h.socket)
			},
			DisableCompression: true,
		},
		Timeout: hookTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("snpd answered with a redirect")
		},
	}
}

func (h *libvirtHook) do(ctx context.Context, method, path string, body any) (*http.Response, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://snpd"+path, rd)
	if err != nil {
		return nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := h.client().Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, api.MaxBodySize))
	if err != nil {
		return nil, nil, fmt.Errorf("reading snpd's answer: %w", err)
	}
	return resp, data, nil
}

// unreachable handles a failed exchange: fail closed unless configured to fail open (a
// policy file that cannot be read keeps it closed).
func (h *libvirtHook) unreachable(domain, what string, err error) error {
	if !h.failOpen && h.policyPath != "" {
		if p, perr := config.LoadPolicy(h.policyPath); perr == nil && p.Libvirt.HookFailOpen {
			h.failOpen = true
		}
	}
	if h.failOpen {
		fmt.Fprintf(h.stderr, "snpd: warning: snpd is unreachable at %s (%v); %s domain %s unchecked (fail-open)\n",
			h.socket, err, what, domain)
		return nil
	}
	return h.refuse(fmt.Sprintf("refusing domain %s: snpd is unreachable at %s (%v); the hook fails closed (to allow: hook_fail_open = true in the host policy's [libvirt] section, --fail-open or SNPD_HOOK_FAIL_OPEN=1): systemctl status snpd",
		domain, h.socket, err))
}

func (h *libvirtHook) register(ctx context.Context, domain string, xml []byte) error {
	resp, data, err := h.do(ctx, http.MethodPost, api.LibvirtDomainsPath, api.LibvirtDomainRequest{Name: domain, XML: string(xml)})
	if err != nil {
		return h.unreachable(domain, "starting", err)
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusCreated:
		return nil
	case http.StatusUnprocessableEntity:
		var pv api.PolicyViolations
		if err := json.Unmarshal(data, &pv); err != nil || len(pv.Violations) == 0 {
			return h.refuse(fmt.Sprintf("refusing domain %s: snpd reports a policy violation: %s", domain, answerMessage(data)))
		}
		lines := []string{fmt.Sprintf("refusing domain %s: %d host-policy violation(s):", domain, len(pv.Violations))}
		for _, v := range pv.Violations {
			lines = append(lines, "rule "+v.Rule+": "+oneLineString(v.Message))
		}
		return h.refuse(lines...)
	default:
		return h.refuse(fmt.Sprintf("refusing domain %s: snpd answered %s: %s", domain, resp.Status, answerMessage(data)))
	}
}

func (h *libvirtHook) release(ctx context.Context, domain string) error {
	resp, data, err := h.do(ctx, http.MethodDelete, api.LibvirtDomainPath(domain), nil)
	if err != nil {
		// Nothing to refuse at release; say it and report failure to libvirt's log.
		fmt.Fprintf(h.stderr, "snpd: releasing domain %s: snpd is unreachable at %s: %v\n", domain, h.socket, err)
		return exitError{code: 1}
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusNoContent, http.StatusNotFound:
		return nil
	}
	fmt.Fprintf(h.stderr, "snpd: releasing domain %s: snpd answered %s: %s\n", domain, resp.Status, answerMessage(data))
	return exitError{code: 1}
}

// answerMessage extracts the error line of an API error body, or quotes the body.
func answerMessage(data []byte) string {
	var e api.Error
	if json.Unmarshal(data, &e) == nil && e.Message != "" {
		return oneLineString(e.Message)
	}
	s := strings.TrimSpace(string(data))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return fmt.Sprintf("%q", s)
}

func oneLineString(s string) string { return strings.ReplaceAll(s, "\n", " ") }
