package snp_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/verify/testdata"

	"github.com/snpd/snpd/snp"
)

func TestDecodeRealReport(t *testing.T) {
	raw := testdata.AttestationBytes[:abi.ReportSize]
	r, err := snp.DecodeReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := abi.ReportToProto(raw)
	if r.Policy != p.GetPolicy() || r.SigningKey != "VCEK" || len(r.Measurement) != 96 || r.ReportedTCB.Raw != p.GetReportedTcb() {
		t.Fatalf("decoded %+v", r)
	}
	if _, err := json.Marshal(r); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]byte{nil, raw[:100], append(bytes.Clone(raw), 0)} {
		if _, err := snp.DecodeReport(bad); err == nil {
			t.Fatalf("%d-byte report accepted", len(bad))
		}
	}
	reserved := bytes.Clone(raw)
	reserved[0x4C] = 1 // must be zero
	if _, err := snp.DecodeReport(reserved); err == nil {
		t.Fatal("report with a non-zero reserved field accepted")
	}
}

// FuzzDecodeReport: arbitrary bytes never panic the decoder, and what decodes re-encodes
// to the same bytes through go-sev-guest.
func FuzzDecodeReport(f *testing.F) {
	f.Add(testdata.AttestationBytes[:abi.ReportSize])
	f.Add(make([]byte, abi.ReportSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := snp.DecodeReport(data)
		if err != nil {
			if r != nil {
				t.Fatal("partial report returned with an error")
			}
			return
		}
		back, err := abi.ReportToAbiBytes(r.Proto())
		if err != nil {
			t.Fatalf("re-encoding a decoded report: %v", err)
		}
		if !bytes.Equal(back, data) {
			t.Fatal("decode/encode round trip changed the report")
		}
	})
}
