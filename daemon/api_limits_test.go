package daemon

import (
	"slices"
	"testing"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp"
)

// TestAPILimitsMatchOwners checks the copies in daemon/api (which snpctl checks its input
// against without linking snp or config) against the packages that own the values.
func TestAPILimitsMatchOwners(t *testing.T) {
	for _, c := range []struct {
		name      string
		api, want int
	}{
		{"MaxDefinitionSize", api.MaxDefinitionSize, config.MaxFileSize},
		{"ReportSize", api.ReportSize, snp.ReportSize},
		{"MaxCertTableSize", api.MaxCertTableSize, snp.MaxCertTableSize},
	} {
		if c.api != c.want {
			t.Errorf("api.%s = %d, its owner says %d", c.name, c.api, c.want)
		}
	}
	if !slices.Equal(api.ReferenceFormats, snp.ReferenceFormats) || api.ReferenceFormatJSON != snp.FormatJSON {
		t.Errorf("api.ReferenceFormats %q (default %q), snp says %q (default %q)",
			api.ReferenceFormats, api.ReferenceFormatJSON, snp.ReferenceFormats, snp.FormatJSON)
	}
}
