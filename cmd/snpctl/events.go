package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/snpd/snpd/daemon/api"
)

func init() { addCommand(newEventsCmd) }

func newEventsCmd() *cobra.Command {
	var vm string
	var kinds []string
	c := &cobra.Command{
		Use:   "events [--vm NAME] [--kind KIND,...] [--json]",
		Short: "Follow snpd's events live: VM state changes, policy refusals, attestation verdicts",
		Long: `Print snpd's events as they happen, one line each, until interrupted (Ctrl-C or
SIGTERM: exit status 0). Three kinds of events (GET /v1/events, docs/api.md):

  state        a VM changed state (starting, running, stopping, stopped, crashed,
               failed), with QEMU's pid and the reason
  policy       the host policy refused a VM at vm start (point "definition"), a
               libvirt domain at the hook ("libvirt_hook"), or a paused QEMU that
               differed from its spec before cont ("runtime"), every rule broken
  attestation  a report was checked against a VM's launch record: snpd challenged the
               guest ("attest") or a verifier posted one ("verify"), ok or the names
               of the checks that failed

A line is "TIME VM KIND WHAT" (time in RFC 3339, UTC). With --json each line is the
event's JSON object (api.Event), for a log shipper. Once snpd has subscribed the stream
a line on stderr says so; events from then on are all printed. When snpd stops or
restarts, the stream ends with an error line and exit status 1 (run it again, or under
a supervisor that restarts it); nothing is replayed.`,
		Example: `  # Every event, one line each, until Ctrl-C
  snpctl events

  # One VM's events
  snpctl events --vm web

  # Policy refusals and attestation verdicts only, as JSON lines for a log shipper
  snpctl events --kind policy,attestation --json >> /var/log/snpd-events.jsonl

  # A second snpd's events
  snpctl --socket /tmp/snpd-run/snpd.sock events`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, k := range kinds {
				if !slices.Contains(api.EventKinds, k) {
					return fmt.Errorf("--kind %q: want %s", k, strings.Join(api.EventKinds, ", "))
				}
			}
			if vm != "" {
				if err := api.ValidName(vm); err != nil {
					return fmt.Errorf("--vm: %w", err)
				}
			}
			return followEvents(cmd, api.EventsOptions{VM: vm, Kinds: kinds})
		},
	}
	c.Flags().StringVar(&vm, "vm", "", "print only the events about this VM (or libvirt domain)")
	c.Flags().StringSliceVar(&kinds, "kind", nil, "print only events of these kinds: state, policy, attestation (comma-separated or repeated)")
	c.Flags().Bool("json", false, "print each event as one JSON object per line")
	return c
}

// followEvents prints the events o selects until SIGINT or SIGTERM (nil) or until snpd
// ends the stream (an error saying so).
func followEvents(cmd *cobra.Command, o api.EventsOptions) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := apiClient(cmd)
	asJSON := jsonOutput(cmd)
	out := cmd.OutOrStdout()
	o.Connected = func() {
		fmt.Fprintf(cmd.ErrOrStderr(), "following snpd events on %s (Ctrl-C to stop)\n", c.Socket)
	}
	err := c.FollowEvents(ctx, o, func(ev api.Event) error { return printEvent(out, ev, asJSON) })
	switch {
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return nil
	case errors.Is(err, api.ErrEventsEnded):
		return fmt.Errorf("%w; follow again once it is back (systemctl status snpd)", err)
	}
	return err
}

// printEvent writes ev as one line: JSON, or "TIME VM KIND WHAT".
func printEvent(w io.Writer, ev api.Event, asJSON bool) error {
	ev.Kind = ev.KindName()
	if asJSON {
		b, err := json.Marshal(ev)
		if err != nil {
			return fmt.Errorf("encoding event: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintf(w, "%s %s %s %s\n", ev.At.UTC().Format(time.RFC3339Nano), ev.VM, ev.Kind, flatLine(eventWhat(ev)))
	return err
}

// eventWhat is the human part of an event's line.
func eventWhat(ev api.Event) string {
	switch ev.Kind {
	case api.EventPolicy:
		vs := make([]string, len(ev.Violations))
		for i, v := range ev.Violations {
			vs[i] = v.Rule
			if v.Message != "" {
				vs[i] += " (" + v.Message + ")"
			}
		}
		return fmt.Sprintf("refused at %s: %s", ev.Point, strings.Join(vs, "; "))
	case api.EventAttestation:
		if ev.OK != nil && *ev.OK {
			return ev.Source + " ok"
		}
		return ev.Source + " failed: " + strings.Join(ev.Failed, ", ")
	}
	s := string(ev.State)
	if ev.PID != 0 {
		s += fmt.Sprintf(" pid=%d", ev.PID)
	}
	if ev.Reason != "" {
		s += ": " + ev.Reason
	}
	return s
}

// flatLine keeps an event on its line whatever its reason holds.
func flatLine(s string) string {
	return strings.NewReplacer("\r\n", "; ", "\n", "; ", "\r", "; ").Replace(s)
}
