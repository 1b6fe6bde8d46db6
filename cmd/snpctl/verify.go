package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp/agentproto"
)

func init() { addCommand(newVerifyCmd) }

func randRead(b []byte) (int, error) { return rand.Read(b) }

// maxReportFile bounds what verify reads from --report (a report plus certificate table).
const maxReportFile = api.ReportSize + api.MaxCertTableSize

func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > max {
		return nil, fmt.Errorf("%s is %d bytes, at most %d", path, st.Size(), max)
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil && st.Size() > 0 {
		return nil, err
	}
	return b, nil
}

func newVerifyCmd() *cobra.Command {
	var vm, report, certs, nonce, userData, reportData string
	var asJSON, allowNonConf, libvirt, snpdVM bool
	c := &cobra.Command{
		Use:   "verify --vm NAME --report FILE",
		Short: "Verify a report obtained elsewhere against a VM's launch record",
		Long: "verify sends FILE (a raw 1184-byte report, optionally followed by a certificate\n" +
			"table) to snpd, which runs the same checks as attest. --certs DIR first imports\n" +
			"every file of DIR snpd takes as certificates (PEM, DER or a certificate table, each\n" +
			"checked against the trusted AMD roots) and names each file it skipped, and why, on\n" +
			"stderr. REPORT_DATA must bind --nonce (1..64 bytes) and --user-data (0..64 bytes),\n" +
			"or equal --report-data; with both, they must agree. Exit 0 only when every check\n" +
			"passes; otherwise each failed check is printed on its own line.\n" +
			"A launch record that is not confidential (platform none: the guest ran without\n" +
			"SEV-SNP) fails the check \"confidential\" unless --allow-non-confidential, which\n" +
			"lets the other checks decide and still warns on stderr.\n" +
			"--vm names a VM defined in snpd or a libvirt domain registered with snpd by the\n" +
			"hook (checked against its registration); a name that is both is refused unless\n" +
			"--snpd-vm or --libvirt says which.",
		Example: `  # A report a guest requested with nonce 0011...eeff, with its certificate table appended
  snpctl verify --vm example --report report.bin --nonce 00112233445566778899aabbccddeeff
  # With the VCEK and chain from a directory, and the exact REPORT_DATA
  snpctl verify --vm example --report report.bin --certs ./certs --report-data "$REPORT_DATA_HEX"
  # A VM on a development host without SEV-SNP (platform none), knowingly
  snpctl verify --vm example --report report.bin --nonce 00112233 --allow-non-confidential
  # A libvirt domain registered by the hook
  snpctl verify --vm web --libvirt --report report.bin --nonce 00112233445566778899aabbccddeeff`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if vm == "" || report == "" {
				return fmt.Errorf("--vm and --report are required")
			}
			if err := checkBindingFlags(nonce, userData, reportData); err != nil {
				return err
			}
			raw, err := readBounded(report, maxReportFile)
			if err != nil {
				return fmt.Errorf("reading report: %w", err)
			}
			req := &api.VerifyRequest{VM: vm, Report: raw, Nonce: nonce, UserData: userData, ReportData: reportData, AllowNonConfidential: allowNonConf}
			if len(raw) > api.ReportSize {
				req.Report, req.CertTable = raw[:api.ReportSize], raw[api.ReportSize:]
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			cl := apiClient(cmd)
			isLibvirt, err := resolveGuest(ctx, cl, vm, libvirt, snpdVM)
			if err != nil {
				return err
			}
			if isLibvirt {
				req.VM, req.LibvirtDomain = "", vm
			}
			if certs != "" {
				if err := importDir(ctx, cl, certs, cmd.ErrOrStderr()); err != nil {
					return err
				}
			}
			resp, err := cl.Verify(ctx, req)
			if err != nil {
				return err
			}
			if !resp.Verdict.Confidential && resp.Verdict.OK {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s: the verdict holds only for a guest without SEV-SNP (--allow-non-confidential)\n", vm)
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), resp); err != nil {
					return err
				}
				if !resp.Verdict.OK {
					return exitError{code: 1}
				}
				return nil
			}
			return printVerdict(cmd.OutOrStdout(), resp.Verdict, true)
		},
	}
	c.Flags().StringVar(&vm, "vm", "", "VM whose launch record the report must match")
	c.Flags().StringVar(&report, "report", "", "raw report file (optionally followed by its certificate table)")
	c.Flags().StringVar(&certs, "certs", "", "directory of certificates (PEM, DER or certificate tables) to import first; files snpd refuses are skipped and named on stderr")
	c.Flags().StringVar(&nonce, "nonce", "", "nonce the report was requested with (hex, 1..64 bytes)")
	c.Flags().StringVar(&userData, "user-data", "", "user data bound with the nonce (hex, 0..64 bytes)")
	c.Flags().StringVar(&reportData, "report-data", "", "exact expected REPORT_DATA (hex, 64 bytes); with --nonce it must be their binding")
	c.Flags().BoolVar(&asJSON, "json", false, "print the answer as JSON")
	guestFlags(c, &libvirt, &snpdVM)
	c.Flags().BoolVar(&allowNonConf, "allow-non-confidential", false, "verify against a launch record that is not confidential (platform none) instead of failing its \"confidential\" check")
	return c
}

// checkBindingFlags checks --nonce, --user-data and --report-data before anything is
// sent: sizes (the binding hashes the nonce's length in 16 bits, so it is bounded to
// 1..64 bytes), and, when both a nonce and an exact REPORT_DATA are given, that the one is
// the binding of the other, so neither silently wins.
func checkBindingFlags(nonceHex, userDataHex, reportDataHex string) error {
	dec := func(flag, s string) ([]byte, error) {
		b, err := hex.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("%s: not hex: %w", flag, err)
		}
		return b, nil
	}
	nonce, err := dec("--nonce", nonceHex)
	if err != nil {
		return err
	}
	ud, err := dec("--user-data", userDataHex)
	if err != nil {
		return err
	}
	rd, err := dec("--report-data", reportDataHex)
	if err != nil {
		return err
	}
	if userDataHex != "" && nonceHex == "" {
		return errors.New("--user-data is bound into REPORT_DATA only together with --nonce")
	}
	if reportDataHex != "" && len(rd) != 64 {
		return fmt.Errorf("--report-data is %d bytes, want 64", len(rd))
	}
	if nonceHex == "" {
		return nil
	}
	b, err := agentproto.BindReportData(nonce, ud)
	if err != nil {
		return fmt.Errorf("--nonce/--user-data: %w", err)
	}
	if reportDataHex != "" && !bytes.Equal(rd, b[:]) {
		return fmt.Errorf("--report-data %.16s… is not the binding of --nonce and --user-data (%.16s…): give the one the report was requested with", reportDataHex, hex.EncodeToString(b[:]))
	}
	return nil
}

// importDir imports every file of dir (symbolic links followed) that snpd takes as
// certificates into its cache, in name order, and names each file it skipped, and why,
// on w, one line each: what is not a regular file, empty, larger than a certificate table
// can be, unreadable, or refused by snpd as certificates (not certificates, or not
// chaining to the trusted roots). Only a failure to reach snpd, or a refusal other than
// "invalid", stops it.
func importDir(ctx context.Context, cl *api.Client, dir string, w io.Writer) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("reading --certs: %w", err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		skip := func(why string) { fmt.Fprintf(w, "skipped %s: %s\n", path, why) }
		st, err := os.Stat(path)
		if err != nil {
			skip(pathlessError(err))
			continue
		}
		switch {
		case st.IsDir():
			skip("a directory")
			continue
		case !st.Mode().IsRegular():
			skip("not a regular file")
			continue
		case st.Size() == 0:
			skip("empty")
			continue
		case st.Size() > api.MaxCertTableSize:
			skip(fmt.Sprintf("%d bytes, more than certificates can be (%d)", st.Size(), api.MaxCertTableSize))
			continue
		}
		b, err := readBounded(path, api.MaxCertTableSize)
		if err != nil {
			skip(pathlessError(err))
			continue
		}
		if _, err := cl.ImportCerts(ctx, b); err != nil {
			if errors.Is(err, api.ErrInvalid) || errors.Is(err, api.ErrTooLarge) {
				skip(errorLine(err))
				continue
			}
			return fmt.Errorf("importing %s: %w", path, err)
		}
	}
	return nil
}

// pathlessError is err's message without the path an *os.PathError repeats.
func pathlessError(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Op + ": " + pe.Err.Error()
	}
	return errorLine(err)
}
