package webhook

import (
	"math"
	"math/rand/v2"
	"time"
)

// Backoff returns the delay before retry n (n = 1 after the first failed attempt; lower n
// count as 1): base×2^(n-1), capped at maxDelay, then spread uniformly over ±jitter of itself
// (jitter is clamped to [0, 1]; 0.2 is usual). The cap applies before the jitter, so a delay
// can reach maxDelay×(1+jitter). The jitter keeps deliveries that failed together, when a
// receiver went down, from all retrying at the same instants. Never negative; safe for
// concurrent use.
func Backoff(n int, base, maxDelay time.Duration, jitter float64) time.Duration {
	if base <= 0 || maxDelay <= 0 {
		return 0
	}
	shift := max(n-1, 0)
	d := maxDelay
	// Shifting only when base<<shift cannot pass maxDelay also rules out overflow.
	if base <= maxDelay>>shift {
		d = base << shift
	}
	switch {
	case jitter > 1:
		jitter = 1
	case !(jitter > 0): // NaN too
		return d
	}
	f := float64(d) * (1 + jitter*(2*rand.Float64()-1))
	if f >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(f)
}
