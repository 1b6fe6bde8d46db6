package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/snpd/snpd/daemon/api"
)

func init() { addCommand(newLibvirtCmd) }

func newLibvirtCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "libvirt",
		Short: "Show the libvirt domains registered with snpd by the libvirt hook",
		Long: `libvirt owns its domains and their QEMU; snpd only checks each domain against the host
policy when libvirt is about to start it (the hook's "prepare begin") and registers it,
with its expected SEV-SNP launch digest when it has <launchSecurity type='sev-snp'>,
until libvirt releases it ("release end"). "list" and "show" read those registrations
back (GET /v1/libvirt/domains). snpctl reference and verify take a registered domain's
name too (see their --libvirt flag); snpctl vm list lists registrations after snpd's
own VMs. --json prints the API's JSON.`,
		Example: `  snpctl libvirt list
  snpctl libvirt show web
  snpctl --json libvirt show web
  snpctl reference web --libvirt --format sev-guest-check > web.textproto`,
	}
	c.AddCommand(libvirtListCmd(), libvirtShowCmd())
	return c
}

func libvirtListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the libvirt domains registered with snpd",
		Long: `List every libvirt domain the hook registered: when, whether it is confidential (an
SEV-SNP launch on an SEV-SNP host), vCPUs, memory and the start of its expected launch
digest ("-" for a domain without sev-snp launch security: it has none). snpd does not
know whether libvirt is running a registered domain; a registration lasts from libvirt's
start of the domain to its release.`,
		Example: `  snpctl libvirt list
  snpctl --json libvirt list`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := apiClient(cmd).LibvirtDomains(cmd.Context())
			if err != nil {
				return err
			}
			if jsonOutput(cmd) {
				return printJSON(cmd.OutOrStdout(), api.LibvirtDomainList{Domains: l})
			}
			return printLibvirtTable(cmd.OutOrStdout(), l)
		},
	}
}

// printLibvirtTable prints registered libvirt domains, one row each.
func printLibvirtTable(w io.Writer, l []api.LibvirtDomainSummary) error {
	tw := newTable(w, 2)
	fmt.Fprintln(tw, "NAME\tREGISTERED\tCONFIDENTIAL\tVCPUS\tMEMORY\tEXPECTED DIGEST")
	for _, d := range l {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%dMiB\t%s\n", d.Name, age(d.RegisteredAt), confidentialWord(d.Confidential, d.Platform), d.VCPUs, d.MemoryMiB, shortDigest(d.ExpectedDigest))
	}
	return tw.Flush()
}

func confidentialWord(conf bool, platform string) string {
	if conf {
		return "yes"
	}
	return "no (platform " + orDash(platform) + ")"
}

func shortDigest(d string) string {
	if len(d) > 16 {
		return d[:16] + "…"
	}
	return orDash(d)
}

func libvirtShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a registered libvirt domain: its expected digest and the record snpd made",
		Long: `Print the registration of libvirt domain NAME: when the hook registered it, its
platform and whether it is confidential, the expected launch digest, the digests of the
boot files the domain names, vCPUs, memory, guest policy, host data and the ID-block key
digests. --json adds the domain XML libvirt passed and the domain as mapped onto snpd's
VM spec (api.LibvirtDomain).`,
		Example: `  snpctl libvirt show web
  snpctl --json libvirt show web | jq -r .record.expected_digest`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := apiClient(cmd).LibvirtDomain(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if jsonOutput(cmd) {
				return printJSON(cmd.OutOrStdout(), d)
			}
			return printLibvirtDomain(cmd.OutOrStdout(), d)
		},
	}
}

func printLibvirtDomain(w io.Writer, d *api.LibvirtDomain) error {
	tw := newTable(w, 1)
	kv := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
	kv("Name", d.Name+" (libvirt domain, registered by the hook)")
	kv("Registered", d.RegisteredAt.Format(time.RFC3339))
	kv("Platform", d.Platform+noteSuffix(d.Note))
	kv("Confidential", confidentialWord(d.Confidential, d.Platform))
	kv("Expected digest", orDash(d.ExpectedDigest))
	if r := d.Record; r != nil {
		if r.ProductLine != "" {
			kv("Product line", r.ProductLine)
		}
		kv("Firmware sha256", fmt.Sprintf("%s (%d bytes)", orDash(r.FirmwareSHA256), r.FirmwareSize))
		kv("Kernel sha256", orDash(r.KernelSHA256))
		kv("Initrd sha256", orDash(r.InitrdSHA256))
		kv("Cmdline", orDash(r.Cmdline))
		kv("vCPUs", fmt.Sprintf("%d x %s", r.VCPUs, orDash(r.CPUModel)))
		kv("Memory", fmt.Sprintf("%d MiB", r.MemoryMiB))
		if r.ExpectedDigest != "" {
			kv("Guest policy", fmt.Sprintf("%#x", r.Policy))
			kv("Guest features", fmt.Sprintf("%#x", r.GuestFeatures))
			kv("Host data", orDash(r.HostData))
			kv("ID block sha256", orDash(r.IDBlockSHA256))
			kv("ID key digest", orDash(r.IDKeyDigest))
			kv("Author key digest", orDash(r.AuthorKeyDigest))
		}
	}
	return tw.Flush()
}

// resolveGuest decides whether name, given to reference or verify, is a VM defined in
// snpd or a libvirt domain registered with snpd. --libvirt and --snpd-vm say it; without
// either, the one that exists is taken, and a name that is both is refused: reference
// values of one guest must never be handed out for another.
func resolveGuest(ctx context.Context, cl *api.Client, name string, libvirt, snpdVM bool) (isLibvirt bool, err error) {
	switch {
	case libvirt && snpdVM:
		return false, errors.New("--libvirt and --snpd-vm exclude each other")
	case libvirt:
		return true, nil
	case snpdVM:
		return false, nil
	}
	if err := api.ValidName(name); err != nil {
		return false, err
	}
	_, vmErr := cl.Get(ctx, name)
	if vmErr != nil && !errors.Is(vmErr, api.ErrNotFound) {
		return false, vmErr
	}
	_, lvErr := cl.LibvirtDomain(ctx, name)
	if lvErr != nil && !errors.Is(lvErr, api.ErrNotFound) {
		return false, lvErr
	}
	isVM, isLV := vmErr == nil, lvErr == nil
	switch {
	case isVM && isLV:
		return false, fmt.Errorf("%q is both a VM defined in snpd and a libvirt domain registered with snpd: say which with --snpd-vm or --libvirt", name)
	case isLV:
		return true, nil
	case isVM:
		return false, nil
	}
	return false, fmt.Errorf("%q is neither a VM defined in snpd nor a libvirt domain registered with snpd: %w", name, api.ErrNotFound)
}

// guestFlags adds --libvirt and --snpd-vm to c.
func guestFlags(c *cobra.Command, libvirt, snpdVM *bool) {
	c.Flags().BoolVar(libvirt, "libvirt", false, "NAME is a libvirt domain registered with snpd (default: whichever of the two exists)")
	c.Flags().BoolVar(snpdVM, "snpd-vm", false, "NAME is a VM defined in snpd (default: whichever of the two exists)")
}
