// Package objstore keeps objects in a NATS JetStream object store bucket,
// in the object store's own format: nats.go's ObjectStore (and the nats
// CLI) read what this package writes, and this package reads objects they
// write.
//
// Put writes the object itself rather than through nats.go's
// ObjectStore.Put, for three reasons found reading nats.go v1.55:
//
//   - Exclusive creation. The object's metadata message is published with
//     an expected last sequence for its subject (Nats-Expected-Last-
//     Subject-Sequence), so of two concurrent Puts of one key, in this
//     process or any other, the server lets exactly one in; the loser gets
//     storage.ErrExists and removes its chunks. ObjectStore.Put would
//     replace the object, and a check for existence before it leaves a
//     window in which both Puts succeed.
//   - No partial chunks. ObjectStore.Put purges the chunks of a failed put
//     with the caller's context, so a Put failed by a cancelled context
//     leaves its chunks behind (the purge is cancelled too), and if the
//     context ends while it waits for the acknowledgements it returns
//     without purging at all. Here the chunks are purged with a context
//     detached from the caller's (bounded by cleanupTimeout).
//   - Digests. The SHA-256 is computed here, recorded in the object's
//     metadata under the key "pacsflow-sha256" in lowercase hex, and also
//     is the object store's own digest; Stat and Open check that the two
//     agree.
//
// Chunks are published one at a time, each waiting for its
// acknowledgement: memory stays at one chunk per Put and a failure is
// known at the chunk it hits. (Measured here, in process on two cores,
// the client's hashing and the server's work keep both cores busy, so
// publishing several chunks ahead would not pay.)
//
// Open reads the chunks one by one with direct gets (the bucket's stream
// allows them) rather than through ObjectStore.Get, whose whole read runs
// under one context that gets the JetStream default timeout (5 s) when the
// caller's has no deadline, so that a slow reader of a large object
// fails, and whose push consumer sends chunks whether or not the reader
// keeps up. Here a reader holds at most one chunk, its Read honours
// Open's ctx, and each chunk request alone gets the default timeout when
// ctx has no deadline. The reader checks the size, chunk count and digest
// at the end: a truncated or corrupt object is an error, never a short
// read.
//
// What remains uncertain:
//
//   - When the server cannot be reached while a Put fails, the chunks it
//     sent may stay behind, never visible as an object; the error says so.
//   - When the acknowledgement of an object's metadata is lost, Put asks
//     the server whether the metadata arrived: if so, the Put succeeded;
//     if the server cannot tell either, Put fails although the object may
//     exist (a retry then gets ErrExists, and Stat's digest tells whether
//     it holds the same bytes).
//   - With Replicas > 1 any replica answers direct gets, and one that lags
//     may not know of an object just stored: a Stat right after a Put can
//     give ErrNotFound, and a reader can fail on a chunk it lacks.
package objstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/pacsflow/pacsflow/pkg/storage"
)

const (
	// DefaultBucket is the bucket of Config.Bucket's zero value.
	DefaultBucket = "pacsflow-instances"
	// DefaultChunkSize is the chunk size of Config.ChunkSize's zero value:
	// small enough that an instance of half a megabyte is two chunks, which
	// send pipelines.
	DefaultChunkSize = 256 << 10
	// sendWindow is how many chunks of one Put are in flight at once.
	sendWindow = 4
	// digestMetaKey is the object metadata entry holding the SHA-256.
	digestMetaKey = "pacsflow-sha256"
	// cleanupTimeout bounds the removal of a failed Put's chunks, which
	// goes on after the caller's context has ended: ample for a server
	// that answers, and what a Put failed by one that does not takes
	// longer than its context allowed.
	cleanupTimeout = 3 * time.Second
	// headerRoom is kept free of chunk data in each message, under the
	// server's maximum payload, for the subject and headers.
	headerRoom = 1 << 10
)

// Config configures a Store.
type Config struct {
	// Bucket is the object store bucket; default DefaultBucket.
	Bucket string
	// Replicas is the bucket's number of replicas; 0 keeps an existing
	// bucket's (a reader must not shrink an R3 bucket) and gives a new one 1.
	Replicas int
	// ChunkSize is the largest chunk an object is cut into; default
	// DefaultChunkSize. It must stay below the server's maximum payload.
	ChunkSize int
	// Storage is where the server keeps the bucket; the zero value is
	// jetstream.FileStorage.
	Storage jetstream.StorageType
}

// Store is a storage.Store on a JetStream object store bucket. It is safe
// for concurrent use.
type Store struct {
	js        jetstream.JetStream
	stream    jetstream.Stream
	bucket    string
	chunkSize int
}

var _ storage.Store = (*Store)(nil)

// New creates the bucket, or brings an existing one's configuration in
// line with cfg (settings cfg does not name go back to the object store's
// defaults), and returns a Store on it.
//
// Give js a publish timeout (jetstream.WithPublishAsyncTimeout): a chunk
// whose acknowledgement is lost, as when the bucket's stream leader goes
// down mid-Put, otherwise holds Put until its ctx ends.
func New(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
		st, err := js.Stream(ctx, streamName(cfg.Bucket))
		switch {
		case err == nil:
			cfg.Replicas = max(st.CachedInfo().Config.Replicas, 1)
		case !errors.Is(err, jetstream.ErrStreamNotFound):
			return nil, fmt.Errorf("objstore: bucket %s: %w", cfg.Bucket, classify(err))
		}
	}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if limit := int(js.Conn().MaxPayload()) - headerRoom; cfg.ChunkSize < 0 || cfg.ChunkSize > limit {
		return nil, fmt.Errorf("objstore: chunk size %d outside 1..%d (the server's maximum payload less room for headers)", cfg.ChunkSize, limit)
	}
	_, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      cfg.Bucket,
		Description: "pacsflow instances",
		Replicas:    cfg.Replicas,
		Storage:     cfg.Storage,
	})
	if err != nil {
		return nil, fmt.Errorf("objstore: create bucket %s: %w", cfg.Bucket, classify(err))
	}
	stream, err := js.Stream(ctx, streamName(cfg.Bucket))
	if err != nil {
		return nil, fmt.Errorf("objstore: bucket %s: %w", cfg.Bucket, classify(err))
	}
	return &Store{js: js, stream: stream, bucket: cfg.Bucket, chunkSize: cfg.ChunkSize}, nil
}

// The object store's layout (ADR-20): one stream per bucket, chunks on a
// subject per object version, metadata on a subject per name.
func streamName(bucket string) string { return "OBJ_" + bucket }

func (s *Store) metaSubject(key string) string {
	return "$O." + s.bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(key))
}

func (s *Store) chunkSubject(id string) string { return "$O." + s.bucket + ".C." + id }

// errNoMeta is current's answer for a key that has never been stored.
var errNoMeta = errors.New("no metadata")

// current returns the key's latest metadata message, decoded, with its
// stream sequence and time; errNoMeta when there is none. A deleted
// object's metadata comes back with Deleted set.
func (s *Store) current(ctx context.Context, key string) (*jetstream.ObjectInfo, *jetstream.RawStreamMsg, error) {
	m, err := s.stream.GetLastMsgForSubject(ctx, s.metaSubject(key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil, errNoMeta
	}
	if err != nil {
		return nil, nil, classify(err)
	}
	var info jetstream.ObjectInfo
	if err := json.Unmarshal(m.Data, &info); err != nil {
		return nil, nil, fmt.Errorf("corrupt object metadata at sequence %d: %w", m.Sequence, err)
	}
	return &info, m, nil
}

// live is current for an object that must exist.
func (s *Store) live(ctx context.Context, key string) (*jetstream.ObjectInfo, *jetstream.RawStreamMsg, error) {
	info, m, err := s.current(ctx, key)
	switch {
	case errors.Is(err, errNoMeta):
		return nil, nil, storage.ErrNotFound
	case err != nil:
		return nil, nil, err
	case info.Deleted:
		return nil, nil, storage.ErrNotFound
	case info.NUID == "" || info.Opts != nil && info.Opts.Link != nil:
		return nil, nil, fmt.Errorf("object is a link or has no chunks (written by another client?)")
	}
	return info, m, nil
}

// Put stores r under key; see storage.Store. r is read a chunk at a time
// and ctx is checked between chunks. The Object's Modified is this
// machine's clock; Stat and Open report the server's.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) (storage.Object, error) {
	if err := storage.ValidateKey(key); err != nil {
		return storage.Object{}, fmt.Errorf("put: %w", err)
	}
	obj, err := s.put(ctx, key, r)
	if err != nil {
		return storage.Object{}, fmt.Errorf("put %s: %w", key, err)
	}
	return obj, nil
}

func (s *Store) put(ctx context.Context, key string, r io.Reader) (storage.Object, error) {
	// Chunks are published asynchronously, and a disconnected client
	// buffers them: without this, a Put to a server that is gone would
	// only fail when ctx ends, then spend the cleanup timeout.
	if st := s.js.Conn().Status(); st != nats.CONNECTED {
		return storage.Object{}, fmt.Errorf("%w: connection %s", storage.ErrUnavailable, st)
	}
	id := nuid.Next()
	chunks := s.chunkSubject(id)
	h := sha256.New()
	size, n, err := s.send(ctx, chunks, r, h)
	if err != nil {
		return storage.Object{}, s.abandon(ctx, chunks, err)
	}
	sum := h.Sum(nil)
	info := &jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{
			Name:     key,
			Metadata: map[string]string{digestMetaKey: hex.EncodeToString(sum)},
			Opts:     &jetstream.ObjectMetaOptions{ChunkSize: uint32(s.chunkSize)},
		},
		Bucket: s.bucket,
		NUID:   id,
		Size:   uint64(size),
		Chunks: n,
		Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(sum),
	}
	// The metadata subject must still be at sequence 0 when this Put's
	// metadata arrives (the key was never stored), or at that of a
	// deletion marker. Keys are nearly always new: try 0 first and look at
	// the subject only when the server says otherwise, rather than spend a
	// round trip on every Put.
	err = s.publishMeta(ctx, info, 0)
	if wrongLastSequence(err) {
		cur, m, cerr := s.current(ctx, key)
		switch {
		case cerr != nil && !errors.Is(cerr, errNoMeta):
			return storage.Object{}, s.abandon(ctx, chunks, cerr)
		case cerr == nil && cur.Deleted:
			err = s.publishMeta(ctx, info, m.Sequence)
		}
	}
	if err != nil {
		if stored, err := s.settle(ctx, key, id, chunks, err); !stored {
			return storage.Object{}, err
		}
	}
	return storage.Object{Key: key, Size: size, SHA256: hex.EncodeToString(sum), Modified: time.Now()}, nil
}

// send publishes r in chunks on subject, feeding h, and returns the size
// and the number of chunks. Up to sendWindow chunks are in flight: the
// next chunk is read from r (often the network) while JetStream stores the
// previous ones, instead of each waiting for the other.
func (s *Store) send(ctx context.Context, subject string, r io.Reader, h hash.Hash) (int64, uint32, error) {
	var (
		bufs    [sendWindow][]byte
		pending [sendWindow]jetstream.PubAckFuture
		size    int64
		n       uint32
	)
	// wait collects the acknowledgement of the chunk in slot i, if any.
	wait := func(i int) error {
		f := pending[i]
		if f == nil {
			return nil
		}
		select {
		case <-f.Ok():
			pending[i] = nil
			return nil
		case err := <-f.Err():
			pending[i] = nil
			return classify(err)
		case <-ctx.Done():
			return classify(ctx.Err()) // still in flight: settle waits for it
		}
	}
	waitAll := func() error {
		var first error
		for i := range pending {
			if err := wait(i); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	// settle waits, whatever ctx says, until every chunk in flight has
	// landed or failed, so that the caller's purge of a failed Put's
	// chunks comes after the last of them. Without a connection there is
	// nothing to wait for: the purge fails too, and says so.
	settle := func() {
		deadline := time.NewTimer(cleanupTimeout)
		defer deadline.Stop()
		poll := time.NewTicker(50 * time.Millisecond)
		defer poll.Stop()
		for i, f := range pending {
			for f != nil {
				if s.js.Conn().Status() != nats.CONNECTED {
					return
				}
				select {
				case <-f.Ok():
					f = nil
				case <-f.Err():
					f = nil
				case <-poll.C:
				case <-deadline.C:
					return
				}
			}
			pending[i] = nil
		}
	}
	for {
		slot := int(n % sendWindow)
		if err := wait(slot); err != nil {
			settle()
			return size, n, fmt.Errorf("chunk %d: %w", int(n)-sendWindow+1, err)
		}
		if err := ctx.Err(); err != nil {
			settle()
			return size, n, err
		}
		if bufs[slot] == nil {
			bufs[slot] = make([]byte, s.chunkSize)
		}
		k, rerr := io.ReadFull(r, bufs[slot])
		if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
			settle()
			return size, n, fmt.Errorf("read: %w", rerr)
		}
		if k > 0 {
			h.Write(bufs[slot][:k])
			f, err := s.js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: bufs[slot][:k]}, jetstream.WithExpectStream(streamName(s.bucket)))
			if err != nil {
				settle()
				return size, n, fmt.Errorf("chunk %d: %w", n+1, classify(err))
			}
			pending[slot] = f
			size += int64(k)
			n++
		}
		if rerr != nil {
			if err := waitAll(); err != nil {
				settle()
				return size, n, fmt.Errorf("chunk: %w", err)
			}
			return size, n, nil
		}
	}
}

// publishMeta publishes info as the object's metadata (a rollup of its
// subject), provided the subject is still at sequence expect.
func (s *Store) publishMeta(ctx context.Context, info *jetstream.ObjectInfo, expect uint64) error {
	data, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("encode metadata: %w", err)
	}
	msg := nats.NewMsg(s.metaSubject(info.Name))
	msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	msg.Data = data
	_, err = s.js.PublishMsg(ctx, msg,
		jetstream.WithExpectStream(streamName(s.bucket)),
		jetstream.WithExpectLastSequencePerSubject(expect))
	if err != nil {
		return fmt.Errorf("metadata: %w", classify(err))
	}
	return nil
}

// settle handles a failed publication of the metadata of an object whose
// chunks (of version id) are all stored, and tells whether the object is
// stored after all.
func (s *Store) settle(ctx context.Context, key, id, chunks string, err error) (bool, error) {
	if wrongLastSequence(err) {
		// Another Put of the key got there first.
		return false, s.abandon(ctx, chunks, fmt.Errorf("%w (stored by a concurrent Put)", storage.ErrExists))
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// The server answered: the metadata is not stored.
		return false, s.abandon(ctx, chunks, err)
	}
	// No answer, but the metadata may have arrived all the same.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	info, _, cerr := s.current(cctx, key)
	switch {
	case cerr == nil && !info.Deleted && info.NUID == id:
		// Only the acknowledgement was lost: the object is complete.
		return true, nil
	case cerr == nil || errors.Is(cerr, errNoMeta):
		return false, s.abandon(ctx, chunks, err)
	default:
		return false, fmt.Errorf("%w; whether the object was stored is unknown: %v", err, cerr)
	}
}

// abandon purges the chunks of a failed Put, with a context of its own
// since the caller's may be what failed it, and returns cause.
func (s *Store) abandon(ctx context.Context, chunks string, cause error) error {
	if st := s.js.Conn().Status(); st != nats.CONNECTED {
		// A purge could only time out.
		return fmt.Errorf("%w; its partial chunks on %s remain: %w: connection %s", cause, chunks, storage.ErrUnavailable, st)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := s.stream.Purge(cctx, jetstream.WithPurgeSubject(chunks)); err != nil {
		return fmt.Errorf("%w; its partial chunks on %s remain: %v", cause, chunks, classify(err))
	}
	return cause
}

// Open returns a reader of the object's chunks; see storage.Store. The
// reader fails once ctx ends.
func (s *Store) Open(ctx context.Context, key string) (io.ReadCloser, storage.Object, error) {
	if err := storage.ValidateKey(key); err != nil {
		return nil, storage.Object{}, fmt.Errorf("open: %w", err)
	}
	info, m, err := s.live(ctx, key)
	if err == nil {
		var obj storage.Object
		if obj, err = describe(key, info, m); err == nil {
			return &reader{ctx: ctx, s: s, key: key, info: info, subject: s.chunkSubject(info.NUID), next: 1, h: sha256.New()}, obj, nil
		}
	}
	return nil, storage.Object{}, fmt.Errorf("open %s: %w", key, err)
}

// Stat describes an object; see storage.Store.
func (s *Store) Stat(ctx context.Context, key string) (storage.Object, error) {
	if err := storage.ValidateKey(key); err != nil {
		return storage.Object{}, fmt.Errorf("stat: %w", err)
	}
	info, m, err := s.live(ctx, key)
	if err == nil {
		var obj storage.Object
		if obj, err = describe(key, info, m); err == nil {
			return obj, nil
		}
	}
	return storage.Object{}, fmt.Errorf("stat %s: %w", key, err)
}

// describe makes the Object of a metadata message, checking that the
// digest recorded by this package, if any, agrees with the object
// store's.
func describe(key string, info *jetstream.ObjectInfo, m *jetstream.RawStreamMsg) (storage.Object, error) {
	sum, err := jetstream.DecodeObjectDigest(info.Digest)
	if err != nil || len(sum) != sha256.Size {
		return storage.Object{}, fmt.Errorf("object digest %q is not a SHA-256", info.Digest)
	}
	hexSum := hex.EncodeToString(sum)
	if rec, ok := info.Metadata[digestMetaKey]; ok && rec != hexSum {
		return storage.Object{}, fmt.Errorf("recorded sha256 %s disagrees with the object store's digest %s", rec, hexSum)
	}
	return storage.Object{Key: key, Size: int64(info.Size), SHA256: hexSum, Modified: m.Time}, nil
}

// reader reads an object's chunks in order, one direct get each, and
// checks the whole against the metadata at the end.
type reader struct {
	ctx     context.Context
	s       *Store
	key     string
	info    *jetstream.ObjectInfo
	subject string
	next    uint64 // stream sequence to look for the next chunk from
	chunks  uint32 // chunks read
	size    uint64 // bytes read
	h       hash.Hash
	buf     []byte // what is left of the current chunk
	err     error  // sticky: io.EOF at the end
}

func (r *reader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 && r.err == nil {
		r.err = r.fetch()
	}
	if len(r.buf) == 0 {
		return 0, r.err
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// fetch loads the next chunk into buf, or checks the object at its end.
func (r *reader) fetch() error {
	if r.chunks == r.info.Chunks {
		if r.size != r.info.Size {
			return fmt.Errorf("read %s: %d bytes in %d chunks, want %d", r.key, r.size, r.chunks, r.info.Size)
		}
		sum, err := jetstream.DecodeObjectDigest(r.info.Digest)
		if err != nil || !bytes.Equal(sum, r.h.Sum(nil)) {
			return fmt.Errorf("read %s: %w", r.key, jetstream.ErrDigestMismatch)
		}
		return io.EOF
	}
	if err := r.ctx.Err(); err != nil {
		return fmt.Errorf("read %s: %w", r.key, err)
	}
	m, err := r.s.stream.GetMsg(r.ctx, r.next, jetstream.WithGetMsgSubject(r.subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("read %s: chunk %d of %d is missing (object deleted?)", r.key, r.chunks+1, r.info.Chunks)
	}
	if err != nil {
		return fmt.Errorf("read %s: chunk %d: %w", r.key, r.chunks+1, classify(err))
	}
	r.next = m.Sequence + 1
	r.chunks++
	r.size += uint64(len(m.Data))
	r.h.Write(m.Data)
	r.buf = m.Data
	return nil
}

// Close ends the reading; it holds nothing on the server.
func (r *reader) Close() error {
	r.buf, r.err = nil, errors.New("read after close")
	return nil
}

// Delete replaces the object's metadata with a deletion marker, then
// purges its chunks; see storage.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := storage.ValidateKey(key); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	if err := s.remove(ctx, key); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

func (s *Store) remove(ctx context.Context, key string) error {
	info, m, err := s.live(ctx, key)
	if err != nil {
		return err
	}
	marker := *info
	marker.Deleted = true
	marker.Size, marker.Chunks, marker.Digest = 0, 0, ""
	marker.ModTime = time.Time{}
	// Expecting the object's own sequence makes one of concurrent Deletes
	// win and the others find nothing.
	if err := s.publishMeta(ctx, &marker, m.Sequence); err != nil {
		if wrongLastSequence(err) {
			return storage.ErrNotFound
		}
		return err
	}
	if err := s.stream.Purge(ctx, jetstream.WithPurgeSubject(s.chunkSubject(info.NUID))); err != nil {
		return fmt.Errorf("deleted, but its chunks remain: %w", classify(err))
	}
	return nil
}

// Space reports the account's JetStream file storage: its limit and what
// is left of it; -1 for both where the account has no limit.
func (s *Store) Space(ctx context.Context) (storage.Space, error) {
	ai, err := s.js.AccountInfo(ctx)
	if err != nil {
		return storage.Space{}, fmt.Errorf("space: %w", classify(err))
	}
	if ai.Limits.MaxStore < 0 {
		return storage.Space{Free: -1, Total: -1}, nil
	}
	free := max(ai.Limits.MaxStore-int64(ai.Store), 0)
	return storage.Space{Free: free, Total: ai.Limits.MaxStore}, nil
}

// wrongLastSequence tells whether a publication was refused because its
// subject had moved past the expected sequence.
func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// JetStream API error codes (nats-server's errors.json) that mean the
// server or account has no room left, or that JetStream is not there.
const (
	errCodeAccountResourcesExceeded = 10002 // resource limits exceeded for account
	errCodeClusterNotAvailable      = 10008 // JetStream system temporarily unavailable
	errCodeInsufficientResources    = 10023 // insufficient resources (server limit)
	errCodeMemoryResourcesExceeded  = 10028 // insufficient memory resources available
	errCodeStorageResourcesExceeded = 10047 // insufficient storage resources available
	errCodeStreamStoreFailed        = 10077 // the stream's own store refused: {err}
	errCodeLastSeqNotReady          = 10163 // expected last sequence per subject temporarily unavailable
)

// classify marks errors of a full server or account as storage.ErrFull
// and errors of an unreachable server as storage.ErrUnavailable, keeping
// the original error in the chain.
func classify(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case errCodeAccountResourcesExceeded, errCodeInsufficientResources,
			errCodeMemoryResourcesExceeded, errCodeStorageResourcesExceeded:
			return fmt.Errorf("%w: %w", storage.ErrFull, err)
		case errCodeStreamStoreFailed:
			// The bucket's MaxBytes, where one is set.
			if strings.Contains(apiErr.Description, "maximum bytes exceeded") {
				return fmt.Errorf("%w: %w", storage.ErrFull, err)
			}
		case errCodeClusterNotAvailable, errCodeLastSeqNotReady,
			jetstream.JSErrCodeJetStreamNotEnabled, jetstream.JSErrCodeJetStreamNotEnabledForAccount:
			return fmt.Errorf("%w: %w", storage.ErrUnavailable, err)
		}
		return err
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return fmt.Errorf("%w: %w", storage.ErrUnavailable, err)
	}
	for _, target := range unavailable {
		if errors.Is(err, target) {
			return fmt.Errorf("%w: %w", storage.ErrUnavailable, err)
		}
	}
	return err
}

// unavailable are the errors of a server that does not answer, besides
// those of the network (net.Error). A context that ends while waiting for
// the server is one: context.DeadlineExceeded, but not context.Canceled,
// which is the caller's decision. The connection breaking under a request
// is another: io.ErrClosedPipe (in-process connections), io.EOF, net.ErrClosed.
var unavailable = []error{
	io.ErrClosedPipe, io.EOF, net.ErrClosed, syscall.ECONNRESET, syscall.EPIPE,
	nats.ErrNoResponders, jetstream.ErrNoStreamResponse,
	nats.ErrConnectionClosed, jetstream.ErrConnectionClosed,
	nats.ErrConnectionReconnecting, nats.ErrDisconnected, nats.ErrConnectionDraining,
	nats.ErrNoServers, nats.ErrStaleConnection, nats.ErrReconnectBufExceeded,
	nats.ErrTimeout, context.DeadlineExceeded,
	jetstream.ErrServerShutdown, jetstream.ErrAsyncPublishTimeout,
}
