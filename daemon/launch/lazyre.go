package launch

import (
	"regexp"
	"sync"
)

// lazyRegexp compiles pattern on first use. snpctl imports this package for every
// subcommand, and compiling the bounded repetitions ({0,62}) of these patterns at init
// was ~0.15 ms (2000 allocations) of every snpctl run.
func lazyRegexp(pattern string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(pattern) })
}
