package main

import (
	"fmt"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/snpd/snpd/daemon/api"
)

func init() { addCommand(newStatusCmd) }

func newStatusCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "status",
		Short: "Show whether snpd runs and how many VMs are in each state",
		Long: `Ask snpd for its status: version, pid and start time, platform ("sev-snp" or "none"),
QEMU binary, state directory, the API socket it serves (the systemd-activated one when
socket-activated), the host policy file (or that it runs without one), the number of VMs in each state, and what it did with each VM found
running when it started. Exit status 1 with a hint when snpd does not answer.`,
		Example: `  snpctl status
  snpctl --socket /tmp/snpd-run/snpd.sock status
  SNPD_SOCKET=/tmp/snpd-run/snpd.sock snpctl --json status`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := apiClient(cmd).Status(cmd.Context())
			if err != nil {
				return err
			}
			if jsonOutput(cmd) {
				return printJSON(cmd.OutOrStdout(), st)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "snpd %s running (pid %d) since %s\n", st.Version, st.PID, st.StartedAt.Format(time.RFC3339))
			fmt.Fprintf(w, "platform: %s\nqemu: %s\nstate dir: %s\nsocket: %s\n", st.Platform, st.QEMU, st.StateDir, st.Socket)
			if st.RunWithoutPolicy {
				fmt.Fprintln(w, "host policy: NONE (run_without_policy = true): every definition and libvirt domain is accepted")
			} else {
				fmt.Fprintf(w, "host policy: %s\n", st.Policy)
			}
			states := make([]string, 0, len(st.VMs))
			for s := range st.VMs {
				states = append(states, string(s))
			}
			sort.Strings(states)
			fmt.Fprint(w, "vms:")
			if len(states) == 0 {
				fmt.Fprint(w, " none")
			}
			for _, s := range states {
				fmt.Fprintf(w, " %d %s", st.VMs[api.State(s)], s)
			}
			fmt.Fprintln(w)
			if st.Reattaching > 0 {
				fmt.Fprintf(w, "reattaching: %d vms (adoption of the guests found at start is still going on)\n", st.Reattaching)
			}
			for _, r := range st.Reattached {
				fmt.Fprintf(w, "at start: %s (pid %d): %s: %s\n", r.VM, r.PID, r.State, r.Detail)
			}
			return nil
		},
	}
	c.Flags().Bool("json", false, "print JSON")
	return c
}
