package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/snpd/snpd/daemon/api"
)

func init() { addCommand(newVMCmd) }

// apiClient returns a client for the socket named by --socket, $SNPD_SOCKET or the default.
func apiClient(cmd *cobra.Command) *api.Client {
	flag, _ := cmd.Flags().GetString("socket")
	return api.NewClient(api.SocketFromEnv(flag))
}

func jsonOutput(cmd *cobra.Command) bool {
	v, _ := cmd.Flags().GetBool("json")
	return v
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newVMCmd() *cobra.Command {
	vm := &cobra.Command{
		Use:   "vm",
		Short: "Define, start, stop and inspect VMs managed by snpd",
		Long: `Manage the VMs snpd launches. A VM is defined once from a TOML file (see
config/examples/vm.toml and docs/configuration.md), then started, stopped and inspected
by name. Every start is measured (the expected SEV-SNP launch digest), checked against
the host policy, verified over QMP before the guest runs, and recorded; "vm show"
prints the record. --json prints the API's JSON instead of tables.`,
		Example: `  snpctl vm define config/examples/vm.toml
  snpctl vm start example
  snpctl vm list
  snpctl vm stop example`,
	}
	vm.PersistentFlags().Bool("json", false, "print JSON instead of tables")
	vm.AddCommand(vmDefineCmd(), vmUndefineCmd(), vmListCmd(), vmShowCmd(), vmStartCmd(),
		vmStopCmd(), vmKillCmd(), vmLogCmd(), vmEventsCmd())
	return vm
}

func vmDefineCmd() *cobra.Command {
	var replace bool
	c := &cobra.Command{
		Use:   "define FILE",
		Short: "Store a VM definition (TOML) in snpd; relative paths are resolved against FILE's directory",
		Long: `Send the VM definition in FILE (TOML) to snpd, which decodes it strictly (an unknown
key is an error naming its line), validates it (every problem is listed) and stores it.
Relative paths in it are resolved against FILE's directory. Nothing is started: the
host policy is enforced at "vm start" ("snpctl policy check FILE" checks it now).
Prints "defined NAME". A name already defined is refused unless --replace is given and
the VM is stopped.`,
		Example: `  snpctl vm define config/examples/vm.toml
  snpctl vm define --replace /etc/snpd/vms/web.toml
  snpctl --json vm define /etc/snpd/vms/web.toml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return fmt.Errorf("reading definition: %w", err)
			}
			defer f.Close()
			b, err := io.ReadAll(io.LimitReader(f, api.MaxDefinitionSize+1))
			if err != nil {
				return fmt.Errorf("reading definition: %w", err)
			}
			if len(b) > api.MaxDefinitionSize {
				return fmt.Errorf("%s: larger than %d bytes", args[0], api.MaxDefinitionSize)
			}
			abs, err := filepath.Abs(args[0])
			if err != nil {
				return fmt.Errorf("resolving %s: %w", args[0], err)
			}
			info, err := apiClient(cmd).Define(cmd.Context(), api.DefineRequest{File: args[0], TOML: string(b), Dir: filepath.Dir(abs), Replace: replace})
			if err != nil {
				return err
			}
			if jsonOutput(cmd) {
				return printJSON(cmd.OutOrStdout(), info)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "defined %s\n", info.Name)
			return nil
		},
	}
	c.Flags().BoolVar(&replace, "replace", false, "replace an existing definition of a stopped VM")
	return c
}

func vmUndefineCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "undefine NAME",
		Short: "Remove a stopped VM's definition and run history",
		Example: `  snpctl vm stop example
  snpctl vm undefine example`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := apiClient(cmd).Undefine(cmd.Context(), args[0]); err != nil {
				return err
			}
			if jsonOutput(cmd) {
				return printJSON(cmd.OutOrStdout(), map[string]string{"undefined": args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "undefined %s\n", args[0])
			return nil
		},
	}
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Truncate(time.Second).String()
}

func vmListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List VMs with their state, then the libvirt domains registered with snpd",
		Long: `List the VMs snpd defined, with their state, and after them, under "libvirt domains
(owned by libvirt, registered by the hook):", every libvirt domain the hook registered
(as "snpctl libvirt list" shows them; snpd does not start, stop or watch those). --json
prints {"vms": [...], "libvirt_domains": [...]}, each as the API returns it.`,
		Example: `  snpctl vm list
  snpctl --json vm list`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl := apiClient(cmd)
			vms, err := cl.List(cmd.Context())
			if err != nil {
				return err
			}
			lv, err := cl.LibvirtDomains(cmd.Context())
			if err != nil && !errors.Is(err, api.ErrNotFound) { // an snpd without the route has none
				return fmt.Errorf("listing libvirt domains: %w", err)
			}
			if jsonOutput(cmd) {
				return printJSON(cmd.OutOrStdout(), vmListJSON{VMs: vms, LibvirtDomains: lv})
			}
			w := cmd.OutOrStdout()
			tw := newTable(w, 2)
			fmt.Fprintln(tw, "NAME\tSTATE\tPID\tSINCE\tVCPUS\tMEMORY\tSTARTS\tRESTART")
			for _, v := range vms {
				pid := "-"
				if v.PID > 0 {
					pid = fmt.Sprint(v.PID)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dMiB\t%d\t%s\n", v.Name, v.State, pid, age(v.Since), v.VCPUs, v.MemoryMiB, v.Starts, orDash(v.Restart))
			}
			if err := tw.Flush(); err != nil || len(lv) == 0 {
				return err
			}
			fmt.Fprintln(w, "\nlibvirt domains (owned by libvirt, registered by the hook):")
			return printLibvirtTable(w, lv)
		},
	}
}

// vmListJSON is what vm list --json prints: GET /v1/vms's VMs and GET
// /v1/libvirt/domains's domains.
type vmListJSON struct {
	VMs            []api.VMSummary            `json:"vms"`
	LibvirtDomains []api.LibvirtDomainSummary `json:"libvirt_domains"`
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func vmShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a VM: state, expected measurement and the whole launch record",
		Long: `Print VM NAME's state and its latest launch record: the expected launch digest,
the digests of the firmware, kernel and initrd QEMU loaded, cmdline, SNP policy, guest
features, host data, ID block digests, QEMU version and exact argv, pid, start time,
state transitions and exit status. A VM on platform "none" is marked "no SEV-SNP: not
confidential". --json prints everything as the API returns it (api.VMInfo).`,
		Example: `  snpctl vm show example
  snpctl --json vm show example`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl := apiClient(cmd)
			info, err := cl.Get(cmd.Context(), args[0])
			if errors.Is(err, api.ErrNotFound) {
				if _, lerr := cl.LibvirtDomain(cmd.Context(), args[0]); lerr == nil {
					return fmt.Errorf("%w; a libvirt domain %q is registered with snpd: snpctl libvirt show %s", err, args[0], args[0])
				}
			}
			if err != nil {
				return err
			}
			if jsonOutput(cmd) {
				return printJSON(cmd.OutOrStdout(), info)
			}
			printVMInfo(cmd.OutOrStdout(), info)
			return nil
		},
	}
}

func printVMInfo(w io.Writer, info *api.VMInfo) {
	tw := newTable(w, 1)
	kv := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
	kv("Name", info.Name)
	kv("State", fmt.Sprintf("%s (since %s)", info.State, info.Since.Format(time.RFC3339)))
	if info.PID > 0 {
		kv("PID", info.PID)
	}
	kv("Defined", info.DefinedAt.Format(time.RFC3339))
	kv("Starts", info.Starts)
	kv("Restart", orDash(info.Restart))
	r := info.Last
	if r == nil {
		tw.Flush()
		return
	}
	kv("Last run", r.Seq)
	if r.Error != "" {
		kv("Error", r.Error)
	}
	if r.Exit != nil {
		kv("Exit", r.Exit.String())
	}
	var rec api.LaunchRecord
	if len(r.Record) > 0 && json.Unmarshal(r.Record, &rec) == nil {
		kv("Platform", rec.Platform+noteSuffix(rec.Note))
		kv("Expected digest", orDash(rec.ExpectedDigest))
		kv("Firmware sha256", fmt.Sprintf("%s (%d bytes)", orDash(rec.FirmwareSHA256), rec.FirmwareSize))
		if rec.FirmwareSHA384 != "" {
			kv("Firmware sha384", rec.FirmwareSHA384)
		}
		kv("Kernel sha256", orDash(rec.KernelSHA256))
		if u := rec.KernelUKI; u != nil {
			names := make([]string, len(u.Sections))
			for i, sec := range u.Sections {
				names[i] = sec.Name
			}
			kv("Kernel", "UKI, sections "+strings.Join(names, " "))
			if u.Cmdline != "" {
				kv("UKI cmdline", strconv.Quote(u.Cmdline))
			}
			if u.Uname != "" {
				kv("UKI uname", strconv.Quote(u.Uname))
			}
		}
		kv("Initrd sha256", orDash(rec.InitrdSHA256))
		kv("Cmdline", orDash(rec.Cmdline))
		kv("vCPUs", fmt.Sprintf("%d x %s (signature %#x)", rec.VCPUs, rec.CPUModel, rec.VCPUSig))
		kv("Memory", fmt.Sprintf("%d MiB", rec.MemoryMiB))
		kv("Guest policy", fmt.Sprintf("%#x", rec.Policy))
		kv("Guest features", fmt.Sprintf("%#x", rec.GuestFeatures))
		kv("Host data", orDash(rec.HostData))
		kv("ID block sha256", orDash(rec.IDBlockSHA256))
		kv("ID auth sha256", orDash(rec.IDAuthSHA256))
		kv("QEMU", rec.QEMUPath+" "+rec.QEMUVersion+" (accel "+rec.Accel+")")
		kv("Started", rec.StartedAt.Format(time.RFC3339Nano))
		kv("Start ticks", rec.StartTicks)
		kv("Runtime dir", rec.RuntimeDir)
		kv("Argv", strings.Join(rec.Argv, " "))
	}
	fmt.Fprintln(tw, "Transitions:\t")
	for _, t := range r.Transitions {
		fmt.Fprintf(tw, "  %s\t%s %s\n", t.At.Format(time.RFC3339Nano), t.State, t.Reason)
	}
	tw.Flush()
}

func noteSuffix(n string) string {
	if n == "" {
		return ""
	}
	return " (" + n + ")"
}

func vmStartCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "start NAME",
		Short: "Launch a VM (measured, verified over QMP, recorded before it runs)",
		Long: `Launch VM NAME. snpd seals the firmware, kernel and initrd into memfds and computes
the expected launch digest from exactly those bytes, checks the VM against the host
policy (every violated rule is listed), starts QEMU paused, verifies the running
machine over QMP (SNP policy, the sev-snp-guest object, vCPUs, memory, PCI devices),
records the launch, and only then lets the guest run. Prints "NAME: running (pid N)".

On any failure nothing is left behind (no QEMU, no runtime directory) and the one-line
error says why; on a host without SEV-SNP it says what to check. On platform "none"
the VM runs without SEV-SNP and is shown as "no SEV-SNP: not confidential".`,
		Example: `  snpctl vm start example
  snpctl --json vm start example`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := apiClient(cmd).Start(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printStateChange(cmd, info)
		},
	}
}

func printStateChange(cmd *cobra.Command, info *api.VMInfo) error {
	if jsonOutput(cmd) {
		return printJSON(cmd.OutOrStdout(), info)
	}
	line := fmt.Sprintf("%s: %s", info.Name, info.State)
	if info.PID > 0 {
		line += fmt.Sprintf(" (pid %d)", info.PID)
	}
	if info.Last != nil && info.Last.Exit != nil {
		line += ": " + info.Last.Exit.String()
	}
	fmt.Fprintln(cmd.OutOrStdout(), line)
	return nil
}

func vmStopCmd() *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "stop NAME",
		Short: "Power a VM off (ACPI); QEMU is killed after --timeout",
		Long: `Ask VM NAME's guest to power off (ACPI power button). If it still runs after
--timeout (default: snpd's stop_timeout), QEMU is told to quit, then killed. QEMU's
exit status and the last lines of its stderr are kept in the VM's run history ("vm
show"). Prints the VM's new state.`,
		Example: `  snpctl vm stop example
  snpctl vm stop --timeout 2m example`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := apiClient(cmd).Stop(cmd.Context(), args[0], api.StopRequest{TimeoutSeconds: timeout.Seconds()})
			if err != nil {
				return err
			}
			return printStateChange(cmd, info)
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 0, "graceful power-off time before QEMU is killed (0: snpd's stop_timeout)")
	return c
}

func vmKillCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "kill NAME",
		Short:   "Kill a VM's QEMU at once",
		Example: `  snpctl vm kill example`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := apiClient(cmd).Kill(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printStateChange(cmd, info)
		},
	}
}

func vmLogCmd() *cobra.Command {
	var n int
	c := &cobra.Command{
		Use:   "log NAME",
		Short: "Print the tail of a VM's console log",
		Example: `  snpctl vm log example
  snpctl vm log --bytes 4096 example`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if jsonOutput(cmd) {
				var sb strings.Builder
				if err := apiClient(cmd).Log(cmd.Context(), args[0], n, &sb); err != nil {
					return err
				}
				return printJSON(cmd.OutOrStdout(), map[string]string{"vm": args[0], "log": sb.String()})
			}
			return apiClient(cmd).Log(cmd.Context(), args[0], n, cmd.OutOrStdout())
		},
	}
	c.Flags().IntVar(&n, "bytes", 16<<10, "how many bytes of the log's end to print")
	return c
}

func vmEventsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "events [NAME]",
		Short: "Stream snpd's events (of one VM) until interrupted; same as snpctl events [--vm NAME]",
		Example: `  # Every VM's events, one line each, until Ctrl-C
  snpctl vm events
  # One VM's, as JSON lines
  snpctl --json vm events example`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o := api.EventsOptions{}
			if len(args) == 1 {
				o.VM = args[0]
			}
			return followEvents(cmd, o)
		},
	}
}
