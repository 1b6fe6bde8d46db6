// Command snpd is the SEV-SNP host daemon.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "snpd: not implemented yet")
	os.Exit(1)
}
