package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/snpd/snpd/daemon/api"
)

func init() { addCommand(newReferenceCmd) }

func newReferenceCmd() *cobra.Command {
	var format string
	var libvirt, snpdVM bool
	c := &cobra.Command{
		Use:   "reference NAME",
		Short: "Print a VM's or registered libvirt domain's reference values for verifiers (" + strings.Join(api.ReferenceFormats, "|") + ")",
		Long: "reference prints what a verifier needs to appraise VM NAME's reports, from its\n" +
			"launch record: json (snpd's own), trustee (a Confidential Containers Trustee RVPS\n" +
			"sample message, for its default SNP policy), sev-guest-check (the check.Config\n" +
			"textproto go-sev-guest's check tool reads with -config, from a file named\n" +
			"*.textproto), launch-log (every page update, to recompute the digest).\n" +
			"No format carries trusted roots: the verifier pins AMD's (check: -product LINE\n" +
			"or -product_key_path) and binds its nonce (check: -report_data). See docs/api.md.\n" +
			"NAME is a VM defined in snpd or a libvirt domain registered with snpd by the hook\n" +
			"(its registration's values; only a domain with sev-snp launch security has any);\n" +
			"a name that is both is refused unless --snpd-vm or --libvirt says which.",
		Example: `  snpctl reference example
  snpctl reference --format trustee example > example-rv.json
  rvps-tool register --path example-rv.json
  snpctl reference --format sev-guest-check example > example.textproto
  check -config example.textproto -in report.bin -report_data "$REPORT_DATA" -product Milan
  # A libvirt domain registered by the hook
  snpctl reference web --libvirt --format trustee`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ok := false
			for _, f := range api.ReferenceFormats {
				ok = ok || f == format
			}
			if !ok {
				return fmt.Errorf("--format %q: want one of %s", format, strings.Join(api.ReferenceFormats, ", "))
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 60*time.Second)
			defer cancel()
			cl := apiClient(cmd)
			isLibvirt, err := resolveGuest(ctx, cl, args[0], libvirt, snpdVM)
			if err != nil {
				return err
			}
			path := api.ReferencePath(args[0], format)
			if isLibvirt {
				path = api.LibvirtReferencePath(args[0], format)
			}
			return cl.Do(ctx, "GET", path, nil, cmd.OutOrStdout())
		},
	}
	c.Flags().StringVar(&format, "format", api.ReferenceFormatJSON, "output format: "+strings.Join(api.ReferenceFormats, ", "))
	guestFlags(c, &libvirt, &snpdVM)
	return c
}
