package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// The libvirt endpoints. The hook (snpctl libvirt-hook) registers and drops domains:
//
//	POST   /v1/libvirt/domains         body LibvirtDomainRequest
//	       200 LibvirtDomainResponse   the domain conforms; snpd recorded its expected digest
//	       422 PolicyViolations        the domain breaks the host policy (Kind "policy")
//	       400 Error                   the XML cannot be mapped (Kind "invalid")
//	DELETE /v1/libvirt/domains/{name}
//	       204 (or 200)                registration dropped; 404 Error when none existed
//
// and anyone with the read role reads them back (snpctl libvirt list|show, reference,
// verify):
//
//	GET    /v1/libvirt/domains                   200 LibvirtDomainList
//	GET    /v1/libvirt/domains/{name}            200 LibvirtDomain; 404 when not registered
//	GET    /v1/libvirt/domains/{name}/reference  as GET /v1/vms/{name}/reference
const LibvirtDomainsPath = "/v1/libvirt/domains"

// LibvirtDomainPath is the path of one registered libvirt domain.
func LibvirtDomainPath(name string) string { return LibvirtDomainsPath + "/" + url.PathEscape(name) }

// LibvirtReferencePath is GET /v1/libvirt/domains/{name}/reference?format=FORMAT: the
// reference values of a registered sev-snp domain, in the formats of ReferencePath.
func LibvirtReferencePath(name, format string) string {
	return LibvirtDomainPath(name) + "/reference?format=" + url.QueryEscape(format)
}

// LibvirtDomainSummary is one registered libvirt domain as GET /v1/libvirt/domains lists
// it. snpd registers a domain when libvirt is about to start it (the hook's "prepare
// begin") and drops it when libvirt has released it ("release end"): libvirt owns the
// domain and its QEMU; snpd does not know whether it is running.
type LibvirtDomainSummary struct {
	Name string `json:"name"`
	// RegisteredAt is when the hook registered it (its last start).
	RegisteredAt time.Time `json:"registered_at"`
	// Platform is snpd's platform at registration ("sev-snp" or "none").
	Platform string `json:"platform"`
	// Confidential is true only for a domain with <launchSecurity type='sev-snp'>
	// registered on platform "sev-snp"; Note is NotConfidential otherwise.
	Confidential bool   `json:"confidential"`
	Note         string `json:"note,omitempty"`
	// ExpectedDigest is the SEV-SNP launch digest snpd expects (hex; empty for a domain
	// without sev-snp launch security: it has none).
	ExpectedDigest string `json:"expected_digest,omitempty"`
	// VCPUs, CPUModel and MemoryMiB (MiB) as mapped from the domain XML.
	VCPUs     int    `json:"vcpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	MemoryMiB uint64 `json:"memory_mib"`
}

// LibvirtDomainList is the body of GET /v1/libvirt/domains, in name order.
type LibvirtDomainList struct {
	Domains []LibvirtDomainSummary `json:"domains"`
}

// LibvirtDomain is the body of GET /v1/libvirt/domains/{name}: the summary, the domain
// XML libvirt gave the hook, the domain as mapped onto snpd's VM spec (config.VM as
// JSON), and the record snpd made of it (expected digest, boot-file digests, policy,
// ID-block key digests; no process: libvirt starts QEMU).
type LibvirtDomain struct {
	LibvirtDomainSummary
	XML        string          `json:"xml"`
	Definition json.RawMessage `json:"definition"`
	Record     *LaunchRecord   `json:"record"`
}

// LibvirtDomains lists the libvirt domains registered with snpd.
func (c *Client) LibvirtDomains(ctx context.Context) ([]LibvirtDomainSummary, error) {
	var l LibvirtDomainList
	err := c.Do(ctx, http.MethodGet, LibvirtDomainsPath, nil, &l)
	return l.Domains, err
}

// LibvirtDomain returns one registered libvirt domain (ErrNotFound when not registered).
func (c *Client) LibvirtDomain(ctx context.Context, name string) (*LibvirtDomain, error) {
	var d LibvirtDomain
	return &d, c.Do(ctx, http.MethodGet, LibvirtDomainPath(name), nil, &d)
}

// LibvirtDomainRequest is the body of POST /v1/libvirt/domains: a domain libvirt is
// about to start (the hook's "prepare begin").
type LibvirtDomainRequest struct {
	// Name is the domain name libvirt passed to the hook (argv[1]).
	Name string `json:"name"`
	// XML is the full domain XML libvirt gave the hook on stdin (at most 1 MiB).
	XML string `json:"xml"`
}

// LibvirtDomainResponse is the 200 answer to POST /v1/libvirt/domains.
type LibvirtDomainResponse struct {
	// Name echoes the domain name.
	Name string `json:"name"`
	// ExpectedDigest is the SEV-SNP launch digest (48 bytes, hex) snpd expects for a
	// domain with <launchSecurity type='sev-snp'>. Empty for any other domain: it is not
	// confidential and has no SNP launch digest. On platform "none" a sev-snp domain's
	// digest is computed for reference, as for snpd's own VMs there.
	ExpectedDigest string `json:"expected_digest,omitempty"`
	// Note is NotConfidential when the domain will run without SEV-SNP (no sev-snp
	// launchSecurity, or platform "none"); empty for a confidential domain.
	Note string `json:"note,omitempty"`
}

// Violation is one broken host-policy rule (config.Violation on the wire).
type Violation struct {
	// Rule names the rule as in policy.toml, e.g. "snp.forbid_debug".
	Rule string `json:"rule"`
	// Value is the offending value, e.g. "0xb0000".
	Value string `json:"value"`
	// Message is one line naming the value.
	Message string `json:"message"`
}

// PolicyViolations is the 422 body when a definition or libvirt domain breaks the host
// policy: the usual Error fields (Kind "policy") plus every violation, in the policy's
// order.
type PolicyViolations struct {
	Kind       string      `json:"kind"`
	Message    string      `json:"error"`
	Violations []Violation `json:"violations"`
}
