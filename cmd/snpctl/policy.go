package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/spf13/cobra"
)

func init() { addCommand(newPolicyCmd) }

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "policy",
		Short:   "Check VM definitions and libvirt domains against the host policy",
		Example: `  snpctl policy check --config /etc/snpd/snpd.toml /etc/snpd/vms/web.toml`,
	}
	cmd.AddCommand(newPolicyCheckCmd())
	return cmd
}

func newPolicyCheckCmd() *cobra.Command {
	var policyPath, libvirtXML, platform, qemu, daemonConfig, imageDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check [--policy FILE] (VMFILE | --libvirt-xml FILE)",
		Short: "Print every host-policy violation of a VM definition or libvirt domain (no daemon needed)",
		Long: `Evaluates a VM definition (TOML) or a libvirt domain XML ("-": stdin) against the
host policy locally: reads the firmware and runs the QEMU binary to learn their digests
and version, prints each violation on its own line and exits 1 if there is any, or prints
"ok: no violations" and exits 0.

With --config the policy file, platform, QEMU binary and image directory come from
snpd's config (flags given on the command line win), so the check is the one snpd would
make.`,
		Example: `  snpctl policy check --config /etc/snpd/snpd.toml /etc/snpd/vms/web.toml
  snpctl policy check --policy config/examples/policy.toml --platform none config/examples/vm.toml
  snpctl policy check --policy /etc/snpd/policy.toml --libvirt-xml web.xml
  virsh dumpxml web | snpctl policy check --json --libvirt-xml -`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (libvirtXML == "") == (len(args) == 0) || len(args) > 1 {
				return fmt.Errorf("give one VM definition file or --libvirt-xml FILE")
			}
			if daemonConfig != "" {
				// snpd's settings stand in for the flags not given.
				d, err := config.LoadDaemon(daemonConfig)
				if err != nil {
					return fmt.Errorf("loading snpd config: %s", oneLine(err))
				}
				d.SetDefaults()
				fl := cmd.Flags()
				if !fl.Changed("policy") {
					if d.PolicyFile == "" {
						return fmt.Errorf("%s sets no policy_file: give --policy", daemonConfig)
					}
					policyPath = d.PolicyFile
				}
				if !fl.Changed("platform") {
					platform = d.Platform
				}
				if !fl.Changed("qemu") {
					qemu = d.QEMU
				}
				if !fl.Changed("image-dir") {
					imageDir = d.ImageDir
				}
			}
			if platform != config.PlatformSEVSNP && platform != config.PlatformNone {
				return fmt.Errorf("--platform %q: want %q or %q", platform, config.PlatformSEVSNP, config.PlatformNone)
			}
			p, err := config.LoadPolicy(policyPath)
			if err != nil {
				return fmt.Errorf("loading host policy: %s", oneLine(err))
			}
			var vm *config.VM
			if libvirtXML != "" {
				data, err := readInput(cmd, libvirtXML, config.MaxLibvirtXMLSize)
				if err != nil {
					return err
				}
				if vm, err = config.FromLibvirtXML(data); err != nil {
					return fmt.Errorf("%s: %s", libvirtXML, oneLine(err))
				}
			} else if vm, err = config.LoadVM(args[0]); err != nil {
				return errors.New(oneLine(err))
			}
			f, ferr := launch.VMFacts(cmd.Context(), vm, platform, qemu)
			f.ImageDir = imageDir
			vs := p.Check(vm, f)
			if libvirtXML != "" {
				// As the hook's registration does, before it measures; the block's digest
				// against the expected one is checked by snpd.
				vs = append(vs, launch.CheckIDBlock(vm, nil)...)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				// config.Violation encodes as api.Violation does (rule, value, message):
				// snpctl need not link the daemon to print it.
				if vs == nil {
					vs = []config.Violation{}
				}
				if err := enc.Encode(struct {
					Name       string             `json:"name"`
					Violations []config.Violation `json:"violations"`
				}{vm.Name, vs}); err != nil {
					return err
				}
			} else {
				for _, v := range vs {
					fmt.Fprintln(cmd.OutOrStdout(), v.String())
				}
			}
			if len(vs) == 0 {
				if !asJSON {
					fmt.Fprintln(cmd.OutOrStdout(), "ok: no violations")
				}
				return nil
			}
			if ferr != nil {
				// Why some facts are unknown (their rules are reported violated above).
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %v\n", oneLine(ferr))
			}
			return exitError{code: 1}
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&policyPath, "policy", config.DefaultPolicyPath, "host policy file")
	fl.StringVar(&libvirtXML, "libvirt-xml", "", "check this libvirt domain XML file (\"-\": stdin) instead of a VM definition")
	fl.StringVar(&platform, "platform", config.PlatformSEVSNP, "host platform the VM would run on: sev-snp or none")
	fl.StringVar(&qemu, "qemu", config.DefaultQEMU, "QEMU binary snpd would run (a libvirt domain's <emulator> wins)")
	fl.StringVar(&imageDir, "image-dir", filepath.Join(config.DefaultStateDir, "images"), "snpd's image directory, where disks are always allowed (devices.disk_dirs adds others)")
	fl.BoolVar(&asJSON, "json", false, "print the violations as JSON")
	fl.StringVar(&daemonConfig, "config", "", "take the policy file, platform and QEMU binary from this snpd.toml (flags given win)")
	return cmd
}

// readInput reads at most limit bytes from path ("-": the command's stdin).
func readInput(cmd *cobra.Command, path string, limit int64) ([]byte, error) {
	var r io.Reader
	if path == "-" {
		r = cmd.InOrStdin()
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("reading domain XML: %w", err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("reading %s: more than %d bytes", path, limit)
	}
	return data, nil
}

// oneLine joins a multi-line (errors.Join) message with "; ".
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }
