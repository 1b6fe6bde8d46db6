package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp"
)

func init() { addCommand(newCertsCmd) }

func newCertsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "certs",
		Short: "Import and list the AMD certificates snpd verifies reports with",
	}
	c.PersistentFlags().Bool("json", false, "print JSON")
	c.AddCommand(&cobra.Command{
		Use:   "import PATH",
		Short: "Import VCEK/VLEK/ASK/ARK certificates (PEM, DER or a GHCB certificate table); each is checked against the trusted AMD roots first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := readBounded(args[0], snp.MaxCertTableSize)
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
		Args:  cobra.NoArgs,
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
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
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
