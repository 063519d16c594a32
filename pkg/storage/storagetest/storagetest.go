// Package storagetest is the conformance suite of storage.Store: every
// backend's tests call Run with a constructor of fresh, empty stores.
package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pacsflow/pacsflow/pkg/storage"
)

// Run runs the conformance suite against the stores newStore makes. Each
// subtest asks for a store of its own, which must be empty; newStore
// registers its own cleanup with t. The subtests do not run in parallel:
// one of them measures the live heap of the whole process.
func Run(t *testing.T, newStore func(t *testing.T) storage.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, st storage.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"Empty", testEmpty},
		{"Large", testLarge},
		{"Exists", testExists},
		{"NotFound", testNotFound},
		{"ReaderFails", testReaderFails},
		{"CancelMidway", testCancelMidway},
		{"InvalidKeys", testInvalidKeys},
		{"InstanceKeys", testInstanceKeys},
		{"ConcurrentDistinct", testConcurrentDistinct},
		{"ConcurrentSameKey", testConcurrentSameKey},
		{"ConcurrentDelete", testConcurrentDelete},
		{"Space", testSpace},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

// key returns the instance key of instance n under a fixed study and
// series.
func key(t *testing.T, n int) string {
	t.Helper()
	k, err := storage.InstanceKey("1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.1.2",
		fmt.Sprintf("1.2.826.0.1.3680043.2.1125.1.2.%d", n+1), "v1")
	if err != nil {
		t.Fatalf("InstanceKey: %v", err)
	}
	return k
}

// payload returns n pseudo-random bytes, different for each seed.
func payload(n int, seed uint64) []byte {
	b := make([]byte, n)
	newGen(int64(n), seed).fill(b)
	return b
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// gen yields a fixed number of pseudo-random bytes (an LCG's high byte)
// without allocating, the same bytes for the same seed whatever the sizes
// of the reads.
type gen struct {
	state uint64
	left  int64
}

func newGen(n int64, seed uint64) *gen { return &gen{state: seed*0x9e3779b97f4a7c15 + 1, left: n} }

func (g *gen) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	g.fill(p)
	g.left -= int64(len(p))
	return len(p), nil
}

// fill fills p with the next bytes of the sequence.
func (g *gen) fill(p []byte) {
	s := g.state
	for i := range p {
		s = s*6364136223846793005 + 1442695040888963407
		p[i] = byte(s >> 56)
	}
	g.state = s
}

// checkObject compares what a store reports with what was stored.
func checkObject(t *testing.T, what string, got storage.Object, key string, data []byte) {
	t.Helper()
	checkMeta(t, what, got, key, int64(len(data)), digest(data))
}

func checkMeta(t *testing.T, what string, got storage.Object, key string, size int64, sum string) {
	t.Helper()
	if got.Key != key || got.Size != size || got.SHA256 != sum {
		t.Errorf("%s: got key %q size %d sha256 %s, want %q %d %s", what, got.Key, got.Size, got.SHA256, key, size, sum)
	}
	if d := time.Since(got.Modified); d < -time.Minute || d > time.Minute {
		t.Errorf("%s: modified %v is not about now", what, got.Modified)
	}
}

// checkContent reads key back and compares it with data.
func checkContent(t *testing.T, st storage.Store, key string, data []byte) {
	t.Helper()
	rc, obj, err := st.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("Open(%s): %v", key, err)
	}
	got, err := io.ReadAll(rc)
	if cerr := rc.Close(); cerr != nil {
		t.Errorf("Close: %v", cerr)
	}
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	checkObject(t, "Open", obj, key, data)
	if !bytes.Equal(got, data) {
		t.Fatalf("read %s: %d bytes (sha256 %s), want %d (sha256 %s)", key, len(got), digest(got), len(data), digest(data))
	}
}

func checkMissing(t *testing.T, st storage.Store, key string) {
	t.Helper()
	ctx := t.Context()
	if _, err := st.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat(%s) = %v, want ErrNotFound", key, err)
	}
	if rc, _, err := st.Open(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		if err == nil {
			rc.Close()
		}
		t.Errorf("Open(%s) = %v, want ErrNotFound", key, err)
	}
}

func testRoundTrip(t *testing.T, st storage.Store) {
	ctx := t.Context()
	k := key(t, 1)
	data := payload(3<<20+17, 1)
	obj, err := st.Put(ctx, k, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	checkObject(t, "Put", obj, k, data)
	got, err := st.Stat(ctx, k)
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	checkObject(t, "Stat", got, k, data)
	checkContent(t, st, k, data)

	if err := st.Delete(ctx, k); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	checkMissing(t, st, k)
	if err := st.Delete(ctx, k); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}

	// A deleted key is free again.
	data = payload(100<<10, 2)
	if _, err := st.Put(ctx, k, bytes.NewReader(data)); err != nil {
		t.Fatalf("Put after Delete: %v", err)
	}
	checkContent(t, st, k, data)
}

func testEmpty(t *testing.T, st storage.Store) {
	ctx := t.Context()
	k := key(t, 1)
	obj, err := st.Put(ctx, k, bytes.NewReader(nil))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	checkObject(t, "Put", obj, k, nil)
	got, err := st.Stat(ctx, k)
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	checkObject(t, "Stat", got, k, nil)
	checkContent(t, st, k, []byte{})
	if err := st.Delete(ctx, k); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	checkMissing(t, st, k)
}

// testLarge streams 64 MiB through Put and Open. Put must not hold the
// object in memory: halfway through, the live heap of the whole process
// (collected) has grown by far less than the object. The allocations of
// the whole Put are logged, not checked: a backend with its server in the
// process allocates what the server does.
func testLarge(t *testing.T, st storage.Store) {
	const size = 64 << 20
	ctx := t.Context()
	k := key(t, 1)
	h := sha256.New()
	if _, err := io.Copy(h, newGen(size, 7)); err != nil {
		t.Fatal(err)
	}
	want := hex.EncodeToString(h.Sum(nil))

	var base, mid, end runtime.MemStats
	r := &failingReader{r: newGen(size, 7), n: size / 2, at: func() {
		runtime.GC()
		runtime.ReadMemStats(&mid)
	}}
	runtime.GC()
	runtime.ReadMemStats(&base)
	obj, err := st.Put(ctx, k, r)
	runtime.ReadMemStats(&end)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	checkMeta(t, "Put", obj, k, size, want)
	held := int64(mid.HeapAlloc) - int64(base.HeapAlloc)
	t.Logf("Put of %d MiB: %.1f MiB more live heap halfway, %.1f MiB allocated in all",
		size>>20, float64(held)/(1<<20), float64(end.TotalAlloc-base.TotalAlloc)/(1<<20))
	if held > size/4 {
		t.Errorf("halfway through a Put of %d MiB the live heap grew by %.1f MiB: the object is not streamed", size>>20, float64(held)/(1<<20))
	}

	rc, got, err := st.Open(ctx, k)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer rc.Close()
	checkMeta(t, "Open", got, k, size, want)
	h.Reset()
	n, err := io.Copy(h, rc)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if n != size || hex.EncodeToString(h.Sum(nil)) != want {
		t.Fatalf("read %d bytes with sha256 %x, want %d with %s", n, h.Sum(nil), size, want)
	}
}

func testExists(t *testing.T, st storage.Store) {
	ctx := t.Context()
	k := key(t, 1)
	first := payload(200<<10, 1)
	if _, err := st.Put(ctx, k, bytes.NewReader(first)); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if _, err := st.Put(ctx, k, bytes.NewReader(payload(300<<10, 2))); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("second Put = %v, want ErrExists", err)
	}
	got, err := st.Stat(ctx, k)
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	checkObject(t, "Stat", got, k, first)
	checkContent(t, st, k, first)
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func testNotFound(t *testing.T, st storage.Store) {
	k := key(t, 1)
	checkMissing(t, st, k)
	if err := st.Delete(t.Context(), k); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Delete = %v, want ErrNotFound", err)
	}
}

var errBoom = errors.New("storagetest: the reader failed")

// failingReader yields n bytes of r, then fails with errBoom; or, with
// at set, calls at and yields the rest of r.
type failingReader struct {
	r  io.Reader
	n  int64
	at func()
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n > 0 {
		if int64(len(p)) > f.n {
			p = p[:f.n]
		}
		n, err := f.r.Read(p)
		f.n -= int64(n)
		return n, err
	}
	if f.at == nil {
		return 0, errBoom
	}
	if f.n == 0 {
		f.at()
		f.n = -1
	}
	return f.r.Read(p)
}

func testReaderFails(t *testing.T, st storage.Store) {
	ctx := t.Context()
	k := key(t, 1)
	r := &failingReader{r: newGen(8<<20, 1), n: 5<<20 + 3}
	if _, err := st.Put(ctx, k, r); !errors.Is(err, errBoom) {
		t.Fatalf("Put = %v, want the reader's error", err)
	}
	checkMissing(t, st, k)
	// Nothing left behind stands in the way of the key.
	data := payload(1000, 2)
	if _, err := st.Put(ctx, k, bytes.NewReader(data)); err != nil {
		t.Fatalf("Put after a failed Put: %v", err)
	}
	checkContent(t, st, k, data)
}

func testCancelMidway(t *testing.T, st storage.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	k := key(t, 1)
	r := &failingReader{r: newGen(8<<20, 1), n: 5<<20 + 3, at: cancel}
	if _, err := st.Put(ctx, k, r); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put = %v, want context.Canceled", err)
	}
	checkMissing(t, st, k)
	data := payload(1000, 2)
	if _, err := st.Put(t.Context(), k, bytes.NewReader(data)); err != nil {
		t.Fatalf("Put after a cancelled Put: %v", err)
	}
	checkContent(t, st, k, data)
}

// invalidKeys are refused by every operation, before anything is read or
// written.
var invalidKeys = []string{
	"../x", "a/../../b", "/abs", "a//b", "A/B", "a b", "", strings.Repeat("a", 300),
	"a/", "./a", "a/./b", "a\\b", "a\x00b", "a#b",
}

func testInvalidKeys(t *testing.T, st storage.Store) {
	ctx := t.Context()
	for _, k := range invalidKeys {
		r := &countingReader{r: bytes.NewReader([]byte("data"))}
		if _, err := st.Put(ctx, k, r); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Put(%q) = %v, want ErrInvalidKey", k, err)
		}
		if n := r.n.Load(); n != 0 {
			t.Errorf("Put(%q) read %d bytes of an object it refuses", k, n)
		}
		if _, err := st.Stat(ctx, k); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Stat(%q) = %v, want ErrInvalidKey", k, err)
		}
		if rc, _, err := st.Open(ctx, k); !errors.Is(err, storage.ErrInvalidKey) {
			if err == nil {
				rc.Close()
			}
			t.Errorf("Open(%q) = %v, want ErrInvalidKey", k, err)
		}
		if err := st.Delete(ctx, k); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidKey", k, err)
		}
	}
}

// testInstanceKeys stores under keys made by InstanceKey, the longest
// possible among them.
func testInstanceKeys(t *testing.T, st storage.Store) {
	ctx := t.Context()
	long := "1." + strings.Repeat("9", 62)
	keys := []string{key(t, 1)}
	for _, args := range [][4]string{
		{long, long, long, strings.Repeat("v", 64)},
		{"1.2", "1.2.3", "1.2.3.4", "0"},
		{"2.25.329800735698586629295641978511506172918", "1.2.3", "1.2.3.4", "2024-01-01t00-00-00"},
	} {
		k, err := storage.InstanceKey(args[0], args[1], args[2], args[3])
		if err != nil {
			t.Fatalf("InstanceKey(%q): %v", args, err)
		}
		keys = append(keys, k)
	}
	for i, k := range keys {
		data := payload(1000+i, uint64(i))
		if _, err := st.Put(ctx, k, bytes.NewReader(data)); err != nil {
			t.Fatalf("Put(%s): %v", k, err)
		}
		checkContent(t, st, k, data)
	}
	for _, k := range keys {
		if err := st.Delete(ctx, k); err != nil {
			t.Fatalf("Delete(%s): %v", k, err)
		}
		checkMissing(t, st, k)
	}
}

func testConcurrentDistinct(t *testing.T, st storage.Store) {
	const n = 16
	ctx := t.Context()
	keys := make([]string, n)
	data := make([][]byte, n)
	for i := range data {
		keys[i] = key(t, i)
		data[i] = payload(300<<10+i, uint64(i))
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			_, errs[i] = st.Put(ctx, keys[i], bytes.NewReader(data[i]))
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	for i := range n {
		checkContent(t, st, keys[i], data[i])
	}
}

// testConcurrentSameKey races Puts of one key: exactly one wins, and the
// object is the winner's.
func testConcurrentSameKey(t *testing.T, st storage.Store) {
	const n = 8
	ctx := t.Context()
	k := key(t, 1)
	data := make([][]byte, n)
	for i := range data {
		data[i] = payload(2<<20+i, uint64(i))
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			_, errs[i] = st.Put(ctx, k, bytes.NewReader(data[i]))
		})
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("Puts %d and %d of one key both succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, storage.ErrExists):
			t.Errorf("Put %d = %v, want success or ErrExists", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no Put of the key succeeded")
	}
	checkContent(t, st, k, data[winner])
}

// testConcurrentDelete races Deletes of one object: exactly one removes
// it, the others find nothing.
func testConcurrentDelete(t *testing.T, st storage.Store) {
	const n = 8
	ctx := t.Context()
	k := key(t, 1)
	if _, err := st.Put(ctx, k, bytes.NewReader(payload(1000, 1))); err != nil {
		t.Fatalf("Put: %v", err)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = st.Delete(ctx, k)
		})
	}
	close(start)
	wg.Wait()
	deleted := 0
	for i, err := range errs {
		switch {
		case err == nil:
			deleted++
		case !errors.Is(err, storage.ErrNotFound):
			t.Errorf("Delete %d = %v, want success or ErrNotFound", i, err)
		}
	}
	if deleted != 1 {
		t.Errorf("%d concurrent Deletes of one object succeeded, want 1", deleted)
	}
	checkMissing(t, st, k)
}

func testSpace(t *testing.T, st storage.Store) {
	sp, err := st.Space(t.Context())
	if err != nil {
		t.Fatalf("Space: %v", err)
	}
	if sp.Free == -1 && sp.Total == -1 {
		return
	}
	if sp.Free < 0 || sp.Total <= 0 || sp.Free > sp.Total {
		t.Fatalf("Space = %+v: want 0 <= Free <= Total, or both -1", sp)
	}
}

// BenchmarkPut stores 512 KiB objects, each under a key of its own, and
// reports objects/s beside the throughput.
func BenchmarkPut(b *testing.B, s storage.Store) {
	const size = 512 << 10
	data := bytes.Repeat([]byte("pacsflow"), size/8)
	keys := make([]string, b.N)
	for i := range keys {
		k, err := storage.InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4."+strconv.Itoa(i+1), "v1")
		if err != nil {
			b.Fatal(err)
		}
		keys[i] = k
	}
	ctx := b.Context()
	b.SetBytes(size)
	b.ResetTimer()
	for i := range b.N {
		if _, err := s.Put(ctx, keys[i], bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "objects/s")
}

// GatedReader yields First, then, once it is drained, closes Drained and
// waits for Gate to be closed before yielding Rest: a Put caught halfway.
type GatedReader struct {
	First, Rest   io.Reader
	Drained, Gate chan struct{}
}

func (g *GatedReader) Read(p []byte) (int, error) {
	if n, err := g.First.Read(p); err != io.EOF {
		return n, err
	}
	if g.Drained != nil {
		close(g.Drained)
		g.Drained = nil
		<-g.Gate
	}
	return g.Rest.Read(p)
}
