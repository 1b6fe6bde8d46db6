package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp/agentproto"
)

func init() { addCommand(newAttestCmd) }

// printVerdict prints one line per check (failed ones marked) and returns exitError{1}
// unless every check passed. quietOK prints nothing for passing checks.
func printVerdict(w io.Writer, v api.Verdict, quietOK bool) error {
	for _, c := range v.Checks {
		if c.OK {
			if !quietOK {
				fmt.Fprintf(w, "ok    %-22s %s\n", c.Name, c.Reason)
			}
			continue
		}
		fmt.Fprintf(w, "FAIL  %-22s %s\n", c.Name, c.Reason)
	}
	if !v.OK {
		return exitError{code: 1}
	}
	return nil
}

func newAttestCmd() *cobra.Command {
	var nonceHex string
	var asJSON bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "attest NAME",
		Short: "Challenge a running guest's agent and verify its report against the launch record",
		Long: "attest sends a nonce (random unless --nonce) to the snp-agent in VM NAME, verifies\n" +
			"the report it returns (signature and chain offline, then the launch record) and\n" +
			"prints each check. Exit 0 only when every check passes.",
		Example: `  snpctl attest example
  snpctl attest --nonce 00112233445566778899aabbccddeeff example
  snpctl attest --json --timeout 2m example`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var nonce []byte
			if nonceHex != "" {
				b, err := hex.DecodeString(nonceHex)
				if err != nil || len(b) < agentproto.MinNonce || len(b) > agentproto.MaxNonce {
					return fmt.Errorf("--nonce: want %d..%d bytes of hex", agentproto.MinNonce, agentproto.MaxNonce)
				}
				nonce = b
			} else {
				nonce = make([]byte, 32)
				if _, err := randRead(nonce); err != nil {
					return fmt.Errorf("generating nonce: %w", err)
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			resp, err := apiClient(cmd).Attest(ctx, args[0], nonce)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if err := printJSON(out, resp); err != nil {
					return err
				}
				if !resp.Verdict.OK {
					return exitError{code: 1}
				}
				return nil
			}
			fmt.Fprintf(out, "vm %s, nonce %s\n", resp.VM, resp.Nonce)
			err = printVerdict(out, resp.Verdict, false)
			if err == nil {
				fmt.Fprintln(out, "verified: every check passed")
			}
			return err
		},
	}
	c.Flags().StringVar(&nonceHex, "nonce", "", "challenge nonce, hex (1..64 bytes; default: 32 random bytes)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the full answer (report, decoded fields, chain, reference values, verdict) as JSON")
	c.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "give up after this long")
	return c
}
