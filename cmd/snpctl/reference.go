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
	c := &cobra.Command{
		Use:   "reference NAME",
		Short: "Print a VM's reference values for verifiers (" + strings.Join(api.ReferenceFormats, "|") + ")",
		Long: "reference prints what a verifier needs to appraise VM NAME's reports, from its\n" +
			"launch record: json (snpd's own), trustee (a Confidential Containers Trustee RVPS\n" +
			"sample message, for its default SNP policy), sev-guest-check (the check.Config\n" +
			"textproto go-sev-guest's check tool reads with -config, from a file named\n" +
			"*.textproto), launch-log (every page update, to recompute the digest).\n" +
			"No format carries trusted roots: the verifier pins AMD's (check: -product LINE\n" +
			"or -product_key_path) and binds its nonce (check: -report_data). See docs/api.md.",
		Example: `  snpctl reference example
  snpctl reference --format trustee example > example-rv.json
  rvps-tool register --path example-rv.json
  snpctl reference --format sev-guest-check example > example.textproto
  check -config example.textproto -in report.bin -report_data "$REPORT_DATA" -product Milan`,
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
			return apiClient(cmd).Do(ctx, "GET", api.ReferencePath(args[0], format), nil, cmd.OutOrStdout())
		},
	}
	c.Flags().StringVar(&format, "format", api.ReferenceFormatJSON, "output format: "+strings.Join(api.ReferenceFormats, ", "))
	return c
}
