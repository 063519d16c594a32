package objstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/natsserver/natstest"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/storage/storagetest"
)

func newStore(t testing.TB, js jetstream.JetStream, cfg Config) *Store {
	t.Helper()
	s, err := New(context.Background(), js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSuite(t *testing.T) {
	for _, chunk := range []int{0, 100 << 10} {
		t.Run("chunk="+strconv.Itoa(chunk), func(t *testing.T) {
			storagetest.Run(t, func(t *testing.T) storage.Store {
				srv := natstest.Start(t, natsserver.Config{})
				s := newStore(t, srv.JS, Config{ChunkSize: chunk})
				t.Cleanup(func() { checkNoOrphans(t, s) })
				return s
			})
		})
	}
}

// checkNoOrphans fails t if the bucket holds chunks that no object's
// metadata names: what a failed Put must not leave.
func checkNoOrphans(t *testing.T, s *Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter("$O."+s.bucket+".>"))
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	live := map[string]bool{}
	for subj := range info.State.Subjects {
		name, ok := strings.CutPrefix(subj, "$O."+s.bucket+".M.")
		if !ok {
			continue
		}
		m, err := s.stream.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			t.Fatalf("metadata %s: %v", name, err)
		}
		var oi jetstream.ObjectInfo
		if err := json.Unmarshal(m.Data, &oi); err != nil {
			t.Fatal(err)
		}
		if !oi.Deleted {
			live[s.chunkSubject(oi.NUID)] = true
		}
	}
	for subj, n := range info.State.Subjects {
		if strings.HasPrefix(subj, "$O."+s.bucket+".C.") && !live[subj] {
			t.Errorf("%d orphan chunks on %s", n, subj)
		}
	}
}

func TestNewIdempotentAndChunkLimit(t *testing.T) {
	srv := natstest.Start(t, natsserver.Config{})
	ctx := t.Context()
	a := newStore(t, srv.JS, Config{})
	if _, err := a.Put(ctx, "a", strings.NewReader("kept")); err != nil {
		t.Fatal(err)
	}
	b := newStore(t, srv.JS, Config{ChunkSize: 64 << 10})
	if _, err := b.Stat(ctx, "a"); err != nil {
		t.Fatalf("second New lost the bucket's objects: %v", err)
	}
	if _, err := New(ctx, srv.JS, Config{ChunkSize: 8 << 20}); err == nil {
		t.Error("New accepted a chunk size of the server's maximum payload")
	}
	if _, err := New(ctx, srv.JS, Config{ChunkSize: -1}); err == nil {
		t.Error("New accepted a negative chunk size")
	}
}

// TestCompatible: nats.go's own object store reads what Store writes, and
// Store reads what nats.go writes.
func TestCompatible(t *testing.T) {
	srv := natstest.Start(t, natsserver.Config{})
	ctx := t.Context()
	s := newStore(t, srv.JS, Config{ChunkSize: 64 << 10})
	obs, err := srv.JS.ObjectStore(ctx, DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 20000)
	if _, err := s.Put(ctx, "ours", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	got, err := obs.GetBytes(ctx, "ours")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("nats.go read %d bytes, %v; want %d", len(got), err, len(data))
	}

	if _, err := obs.PutBytes(ctx, "theirs", data); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	obj, err := s.Stat(ctx, "theirs")
	if err != nil || obj.SHA256 != hex.EncodeToString(sum[:]) || obj.Size != int64(len(data)) {
		t.Fatalf("Stat of nats.go's object = %+v, %v", obj, err)
	}
	rc, _, err := s.Open(ctx, "theirs")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read nats.go's object: %d bytes, %v", len(got), err)
	}
	if err := obs.Delete(ctx, "ours"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, "ours"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat after nats.go's Delete = %v", err)
	}
}

// TestDigestMismatch: metadata whose recorded SHA-256 disagrees with the
// object store's digest is refused.
func TestDigestMismatch(t *testing.T) {
	srv := natstest.Start(t, natsserver.Config{})
	ctx := t.Context()
	s := newStore(t, srv.JS, Config{})
	if _, err := s.Put(ctx, "a", strings.NewReader("bytes")); err != nil {
		t.Fatal(err)
	}
	obs, err := srv.JS.ObjectStore(ctx, DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := obs.UpdateMeta(ctx, "a", jetstream.ObjectMeta{Name: "a", Metadata: map[string]string{digestMetaKey: strings.Repeat("0", 64)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, "a"); err == nil || !strings.Contains(err.Error(), "disagrees") {
		t.Fatalf("Stat = %v, want a digest disagreement", err)
	}
}

// TestFull: a server whose JetStream storage is full refuses the Put with
// ErrFull, and neither the object nor any of its chunks remain.
func TestFull(t *testing.T) {
	srv := natstest.Start(t, natsserver.Config{MaxStore: 2 << 20})
	ctx := t.Context()
	s := newStore(t, srv.JS, Config{ChunkSize: 256 << 10})
	sp, err := s.Space(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Space with a 2 MiB server limit: %+v", sp)
	_, err = s.Put(ctx, "big", io.LimitReader(zeros{}, 3<<20))
	t.Logf("Put of 3 MiB: %v", err)
	if !errors.Is(err, storage.ErrFull) {
		t.Fatalf("Put of 3 MiB into 2 MiB = %v, want ErrFull", err)
	}
	if _, err := s.Stat(ctx, "big"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat after the failed Put = %v", err)
	}
	checkNoOrphans(t, s)
	info, err := s.stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Errorf("%d messages remain in the bucket", info.State.Msgs)
	}
	// The room is back for a small object.
	if _, err := s.Put(ctx, "small", strings.NewReader("fits")); err != nil {
		t.Fatalf("small Put after the failed one: %v", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestUnavailable: with the server gone, every operation fails quickly
// with ErrUnavailable.
func TestUnavailable(t *testing.T) {
	srv := natstest.Start(t, natsserver.Config{})
	s := newStore(t, srv.JS, Config{})
	if _, err := s.Put(t.Context(), "a", strings.NewReader("before")); err != nil {
		t.Fatal(err)
	}
	// The connection's complaint about its server going away is expected.
	srv.Conn.SetErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})
	srv.Shutdown()

	for name, op := range map[string]func(ctx context.Context) error{
		"Put": func(ctx context.Context) error {
			_, err := s.Put(ctx, "b", strings.NewReader("after"))
			return err
		},
		"Stat": func(ctx context.Context) error {
			_, err := s.Stat(ctx, "a")
			return err
		},
		"Open": func(ctx context.Context) error {
			_, _, err := s.Open(ctx, "a")
			return err
		},
		"Delete": func(ctx context.Context) error { return s.Delete(ctx, "a") },
		"Space": func(ctx context.Context) error {
			_, err := s.Space(ctx)
			return err
		},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		start := time.Now()
		err := op(ctx)
		cancel()
		t.Logf("%s: %v after %v", name, err, time.Since(start).Round(time.Millisecond))
		if !errors.Is(err, storage.ErrUnavailable) {
			t.Errorf("%s with the server down = %v, want ErrUnavailable", name, err)
		}
		// Only a hang fails this: the bound is far above the 0.5 s context.
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s took %v to fail", name, d)
		}
	}
}

// TestServerGoneMidway: a Put whose server goes away while it sends
// chunks fails with ErrUnavailable, soon after its context ends.
func TestServerGoneMidway(t *testing.T) {
	srv := natstest.Start(t, natsserver.Config{})
	s := newStore(t, srv.JS, Config{ChunkSize: 64 << 10})
	srv.Conn.SetErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	r := &callbackReader{r: io.LimitReader(zeros{}, 1<<20), n: 200 << 10, at: srv.Shutdown}
	start := time.Now()
	_, err := s.Put(ctx, "k", r)
	t.Logf("Put: %v after %v", err, time.Since(start).Round(time.Millisecond))
	if !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Put = %v, want ErrUnavailable", err)
	}
	// Only a hang fails this: the bound is far above context and cleanup.
	if d := time.Since(start); d > 500*time.Millisecond+3*cleanupTimeout+5*time.Second {
		t.Errorf("Put took %v to fail", d)
	}
}

// callbackReader calls at once n bytes of r are read.
type callbackReader struct {
	r  io.Reader
	n  int
	at func()
}

func (c *callbackReader) Read(p []byte) (int, error) {
	if c.n <= 0 && c.at != nil {
		c.at()
		c.at = nil
	}
	n, err := c.r.Read(p)
	c.n -= n
	return n, err
}

func BenchmarkPut(b *testing.B) {
	for _, chunk := range []int{128 << 10, 1 << 20} {
		b.Run("chunk="+strconv.Itoa(chunk>>10)+"KiB", func(b *testing.B) {
			srv := natstest.Start(b, natsserver.Config{})
			s := newStore(b, srv.JS, Config{ChunkSize: chunk})
			storagetest.BenchmarkPut(b, s)
		})
	}
}

// TestLostRace: of two Puts that both find the key free, the one whose
// metadata comes second gets ErrExists and leaves no chunks.
func TestLostRace(t *testing.T) {
	srv := natstest.Start(t, natsserver.Config{})
	ctx := t.Context()
	s := newStore(t, srv.JS, Config{ChunkSize: 64 << 10})
	slow := &storagetest.GatedReader{
		First:   bytes.NewReader(bytes.Repeat([]byte("a"), 200<<10)),
		Rest:    bytes.NewReader(bytes.Repeat([]byte("b"), 100<<10)),
		Drained: make(chan struct{}), Gate: make(chan struct{}),
	}
	read := slow.Drained
	done := make(chan error, 1)
	go func() {
		_, err := s.Put(ctx, "k", slow)
		done <- err
	}()
	<-read // the slow Put has found the key free and sent chunks
	fast := []byte("the winner")
	if _, err := s.Put(ctx, "k", bytes.NewReader(fast)); err != nil {
		t.Fatalf("fast Put: %v", err)
	}
	close(slow.Gate)
	if err := <-done; !errors.Is(err, storage.ErrExists) {
		t.Fatalf("slow Put = %v, want ErrExists", err)
	}
	rc, _, err := s.Open(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, fast) {
		t.Fatalf("object is %q, %v; want the winner's", got, err)
	}
	checkNoOrphans(t, s)
}

// TestReaderAfterDelete: an object deleted while it is read gives an
// error, not a short read.
func TestReaderAfterDelete(t *testing.T) {
	srv := natstest.Start(t, natsserver.Config{})
	ctx := t.Context()
	s := newStore(t, srv.JS, Config{ChunkSize: 64 << 10})
	if _, err := s.Put(ctx, "k", bytes.NewReader(make([]byte, 300<<10))); err != nil {
		t.Fatal(err)
	}
	rc, _, err := s.Open(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 100<<10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(rc); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("reading on after Delete = %v, want a missing chunk", err)
	}
}

// TestReaderContext: the reader stops when Open's context ends.
func TestReaderContext(t *testing.T) {
	srv := natstest.Start(t, natsserver.Config{})
	s := newStore(t, srv.JS, Config{ChunkSize: 64 << 10})
	if _, err := s.Put(t.Context(), "k", bytes.NewReader(make([]byte, 300<<10))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	rc, _, err := s.Open(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 100<<10)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(rc); !errors.Is(err, context.Canceled) {
		t.Fatalf("reading on after cancel = %v, want context.Canceled", err)
	}
}
