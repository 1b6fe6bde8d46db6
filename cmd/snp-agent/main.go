// Command snp-agent runs inside a guest and answers attestation challenges with reports
// from the AMD Secure Processor.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "snp-agent: not implemented yet")
	os.Exit(1)
}
