package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/snpd/snpd/daemon/api"
)

func init() { addCommand(newCertsCmd) }

func newCertsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "certs",
		Short: "Import and list the AMD certificates snpd verifies reports with",
		Example: `  snpctl certs import vcek.der
  snpctl certs list`,
	}
	c.PersistentFlags().Bool("json", false, "print JSON")
	c.AddCommand(&cobra.Command{
		Use:   "import PATH",
		Short: "Import VCEK/VLEK/ASK/ARK certificates (PEM, DER or a GHCB certificate table); each is checked against the trusted AMD roots first",
		Long: `Send the certificates in PATH to snpd's cache: a VCEK or VLEK and the ASK/ARK
chain, as PEM (one or more blocks), DER, or the GHCB certificate table a guest receives
with its report. Each is checked against the AMD roots snpd trusts before it is stored;
attest and verify then use the cache. Prints the certificates as "certs list" does.`,
		Example: `  # From AMD's KDS (Milan), then the chain
  snpctl certs import vcek.der
  snpctl certs import cert_chain.pem
  # The table snp-agent or /dev/sev-guest handed the guest
  snpctl certs import certs.bin`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := readBounded(args[0], api.MaxCertTableSize)
			if err != nil {
				return fmt.Errorf("reading certificates: %w", err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			l, err := apiClient(cmd).ImportCerts(ctx, b)
			if err != nil {
				return err
			}
			return printCerts(cmd, l)
		},
	}, &cobra.Command{
		Use:   "list",
		Short: "List cached certificates",
		Example: `  snpctl certs list
  snpctl --json certs list`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			l, err := apiClient(cmd).ListCerts(ctx)
			if err != nil {
				return err
			}
			return printCerts(cmd, l)
		},
	})
	return c
}

func printCerts(cmd *cobra.Command, l *api.CertList) error {
	if jsonOutput(cmd) {
		return printJSON(cmd.OutOrStdout(), l)
	}
	tw := newTable(cmd.OutOrStdout(), 2)
	fmt.Fprintln(tw, "KIND\tPRODUCT\tCHIP\tTCB\tNOT AFTER\tSHA256")
	for _, c := range l.Certs {
		chip := c.ChipID
		if len(chip) > 16 {
			chip = chip[:16] + "…"
		}
		if chip == "" {
			chip = "-"
		}
		tcb := c.TCB
		if tcb == "" {
			tcb = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Kind, c.ProductLine, chip, tcb, c.NotAfter.Format("2006-01-02"), c.SHA256[:16])
	}
	return tw.Flush()
}
