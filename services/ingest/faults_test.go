package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sys/unix"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
	"github.com/pacsflow/pacsflow/pkg/dimse/ul"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/genimage"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/storage/fsstore"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// The fault tests check what must hold when things go wrong: a failure
// status leaves neither an object nor an event behind, Success always has
// both, and duplicates collapse to one event.

// mountTmpfs mounts a tmpfs of the given size (e.g. "4m") on a fresh folder
// and unmounts it at the end of the test. Mounting needs root (or
// CAP_SYS_ADMIN); without it the test cannot run at all, and says so.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			t.Skipf("SKIPPED, NOT TESTED: mounting a %s tmpfs needs root or CAP_SYS_ADMIN (%v); run this test as root to cover a full disk", size, err)
		}
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	// Registered after t.TempDir, so it runs before the folder is removed;
	// MNT_DETACH in case a file is still open there.
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// objectKeys lists the objects of the fsstore rooted at root: the files,
// less the store's own names (they contain '#': temporaries, sidecars).
func objectKeys(t *testing.T, root string) []string {
	t.Helper()
	var keys []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if strings.Contains(rel, "#") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			keys = append(keys, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// keysOf returns the keys of the stored versions of one instance.
func keysOf(keys []string, sop string) []string {
	var out []string
	for _, k := range keys {
		// STUDY/SERIES/INSTANCE.VERSION; the version holds no dot.
		if parts := strings.Split(k, "/"); len(parts) == 3 && parts[2][:strings.LastIndexByte(parts[2], '.')] == sop {
			out = append(out, k)
		}
	}
	return out
}

// tempFiles lists what is left in the fsstore's temporary folder.
func tempFiles(t *testing.T, root string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, ".tmp#"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// instanceEvents reads every pacs.instance.stored event in the stream, in
// stream order, straight from JetStream: unlike watchEvents it cannot lag
// behind, so "no event" means none was published.
func instanceEvents(t *testing.T, b *broker) []*events.InstanceStored {
	t.Helper()
	nc, err := b.ns.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "PACSFLOW")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*events.InstanceStored
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		r, err := events.Decode(m.Subject, m.Header, m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if r.Type == events.TypeInstanceStored {
			out = append(out, instanceData(t, r))
		}
	}
	return out
}

func eventsOf(evs []*events.InstanceStored, sop string) []*events.InstanceStored {
	var out []*events.InstanceStored
	for _, e := range evs {
		if e.SOPInstanceUID == sop {
			out = append(out, e)
		}
	}
	return out
}

// dial opens an association from MODALITY that can store CT images.
func dial(addr string) (*dimse.Client, error) {
	return dimse.Dial(context.Background(), addr, dimse.ClientConfig{CallingAE: "MODALITY", CalledAE: "PACSFLOW"},
		[]dimse.Proposal{{AbstractSyntax: uid.CTImageStorage, TransferSyntaxes: []string{uid.ExplicitVRLittleEndian}}})
}

func storeOne(c *dimse.Client, in dicomtest.Instance) (dimse.Result, error) {
	return c.Store(context.Background(), dimse.StoreRequest{AffectedSOPClassUID: in.SOPClassUID, AffectedSOPInstanceUID: in.SOPInstanceUID},
		uid.ExplicitVRLittleEndian, bytes.NewReader(in.DataSet()))
}

// sendAll is send without the test's Fatal, for use in goroutines.
func sendAll(addr string, ins []dicomtest.Instance) ([]dimse.Status, error) {
	c, err := dial(addr)
	if err != nil {
		return nil, err
	}
	var out []dimse.Status
	for _, in := range ins {
		res, err := storeOne(c, in)
		if err != nil {
			_ = c.Abort()
			return out, err
		}
		out = append(out, res.Status)
	}
	return out, c.Release()
}

// readObject returns the bytes of a stored object.
func readObject(t *testing.T, s storage.Store, key string) []byte {
	t.Helper()
	rc, _, err := s.Open(context.Background(), key)
	if err != nil {
		t.Fatalf("open %s: %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b
}

// TestDiskFull: instances go to an fsstore on a 4 MiB tmpfs until one does
// not fit. That one gets A700 and leaves no object, no temporary and no
// event; the ones before it are intact, with their events.
func TestDiskFull(t *testing.T) {
	root := mountTmpfs(t, "4m")
	store, err := fsstore.New(fsstore.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	b := newBroker(t)
	r := startReplica(t, b, replicaOpts{store: store})
	// 1.2 MB each: at most three fit in 4 MiB.
	ins := dicomtest.Study(1, 6, 1_200_000)
	c, err := dial(r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	stored := 0
	var failed *dicomtest.Instance
	for i := range ins {
		res, err := storeOne(c, ins[i])
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
		if res.Status != dimse.StatusSuccess {
			if res.Status != dimse.StatusOutOfResources {
				t.Fatalf("instance %d on a full disk: %s (%s), want A700", i, res.Status, res.Comment)
			}
			failed = &ins[i]
			break
		}
		stored++
	}
	if failed == nil || stored == 0 || stored > 3 {
		t.Fatalf("%d of %d instances of 1.2 MB stored on a 4 MiB tmpfs; want 1 to 3, then A700", stored, len(ins))
	}
	keys := objectKeys(t, root)
	if k := keysOf(keys, failed.SOPInstanceUID); len(k) != 0 {
		t.Errorf("the instance answered A700 left objects %v", k)
	}
	if tmp := tempFiles(t, root); len(tmp) != 0 {
		t.Errorf("temporaries left behind, taking space: %v", tmp)
	}
	evs := instanceEvents(t, b)
	if e := eventsOf(evs, failed.SOPInstanceUID); len(e) != 0 {
		t.Errorf("the instance answered A700 has an event naming %s", e[0].Object.Key)
	}
	if len(evs) != stored || len(keys) != stored {
		t.Fatalf("%d events and %d objects for %d instances stored", len(evs), len(keys), stored)
	}
	for i, in := range ins[:stored] {
		e := eventsOf(evs, in.SOPInstanceUID)
		if len(e) != 1 {
			t.Fatalf("instance %d: %d events", i, len(e))
		}
		if !bytes.Equal(readObject(t, store, e[0].Object.Key), part10Of(in, "MODALITY")) {
			t.Errorf("instance %d stored before the disk filled up is no longer intact", i)
		}
	}
}

// TestMinFreeSpace: below the free space threshold, a new association gets
// a transient A-ASSOCIATE-RJ, an open one gets A700 for its next instance
// and nothing is stored, and Ready (behind /readyz) fails; once there is
// room again, ingest takes instances without a restart.
func TestMinFreeSpace(t *testing.T) {
	b := newBroker(t)
	root := t.TempDir()
	store, err := fsstore.New(fsstore.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	r := startReplica(t, b, replicaOpts{store: store})
	ins := dicomtest.Study(1, 3, 2000)
	open, err := dial(r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Release()

	space, err := fsstore.DiskSpace(root)
	if err != nil {
		t.Fatal(err)
	}
	// startReplica sets MinFreeBytes to 1 so that tests do not depend on
	// the disk; this one needs a threshold above the free space. The
	// guard's mutex (taken by invalidate, then by every check) orders these
	// writes before the checks that read them.
	r.svc.cfg.MinFreeBytes = space.Free + 1<<30
	r.svc.cfg.MinFreeRatio = 1
	r.svc.guard.invalidate()

	err = r.svc.Ready(context.Background())
	if !errors.Is(err, errStorageLow) {
		t.Fatalf("Ready with %d bytes free and a threshold of %d: %v, want %v", space.Free, r.svc.cfg.MinFreeBytes, err, errStorageLow)
	}
	_, err = dial(r.addr)
	var rj *ul.RejectedError
	if !errors.As(err, &rj) || rj.Result != pdu.RejectTransient {
		t.Fatalf("new association below the threshold: %v, want a transient rejection", err)
	}
	res, err := storeOne(open, ins[0])
	if err != nil || res.Status != dimse.StatusOutOfResources {
		t.Fatalf("store on an open association below the threshold: %v %v, want A700", res, err)
	}
	if keys := objectKeys(t, root); len(keys) != 0 {
		t.Errorf("stored below the threshold: %v", keys)
	}
	if evs := instanceEvents(t, b); len(evs) != 0 {
		t.Errorf("%d events below the threshold", len(evs))
	}

	r.svc.cfg.MinFreeBytes = 1
	r.svc.guard.invalidate()
	if err := r.svc.Ready(context.Background()); err != nil {
		t.Fatalf("Ready with room again: %v", err)
	}
	if res, err := storeOne(open, ins[0]); err != nil || res.Status != dimse.StatusSuccess {
		t.Fatalf("store on the open association with room again: %v %v", res, err)
	}
	allSuccess(t, send(t, r.addr, ins[1:]))
}

// TestOversizedInstance: an instance above MaxInstanceBytes gets A700 and
// nothing is stored or published, whether it is larger than what is read
// ahead to find its attributes (64 KiB) or not.
func TestOversizedInstance(t *testing.T) {
	for _, c := range []struct {
		name       string
		limit      int64
		pixelBytes int
	}{
		{"larger than the read-ahead", 64 << 10, 200 << 10},
		{"within the read-ahead", 16 << 10, 32 << 10},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newBroker(t)
			root := t.TempDir()
			store, err := fsstore.New(fsstore.Config{Root: root})
			if err != nil {
				t.Fatal(err)
			}
			r := startReplica(t, b, replicaOpts{store: store, cfg: Config{MaxInstanceBytes: c.limit}})
			in := dicomtest.Study(1, 1, c.pixelBytes)[0]
			conn, err := dial(r.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Release()
			res, err := storeOne(conn, in)
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != dimse.StatusOutOfResources {
				t.Errorf("instance of %d bytes with a limit of %d: %s, want A700", len(part10Of(in, "MODALITY")), c.limit, res.Status)
			}
			if keys := objectKeys(t, root); len(keys) != 0 {
				t.Errorf("oversized instance stored: %v", keys)
			}
			if evs := instanceEvents(t, b); len(evs) != 0 {
				t.Errorf("oversized instance published as %s", evs[0].Object.Key)
			}
		})
	}
}

// TestDataSetMismatch: a data set whose SOP Instance UID is not the one of
// the C-STORE command gets A900 and leaves nothing behind, under either
// UID; the association goes on.
func TestDataSetMismatch(t *testing.T) {
	b := newBroker(t)
	root := t.TempDir()
	store, err := fsstore.New(fsstore.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	r := startReplica(t, b, replicaOpts{store: store})
	ins := dicomtest.Study(1, 2, 100<<10)
	claimed := ins[0].SOPInstanceUID + ".7"
	c, err := dial(r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	res, err := c.Store(context.Background(), dimse.StoreRequest{AffectedSOPClassUID: ins[0].SOPClassUID, AffectedSOPInstanceUID: claimed},
		uid.ExplicitVRLittleEndian, bytes.NewReader(ins[0].DataSet()))
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != dimse.StatusDataSetMismatch {
		t.Fatalf("mismatching SOP Instance UID: %s (%s), want A900", res.Status, res.Comment)
	}
	if keys := objectKeys(t, root); len(keys) != 0 {
		t.Errorf("the mismatching data set was stored: %v", keys)
	}
	if tmp := tempFiles(t, root); len(tmp) != 0 {
		t.Errorf("temporaries left behind: %v", tmp)
	}
	if evs := instanceEvents(t, b); len(evs) != 0 {
		t.Errorf("the mismatching data set was published as %s", evs[0].Object.Key)
	}
	if res, err := storeOne(c, ins[1]); err != nil || res.Status != dimse.StatusSuccess {
		t.Fatalf("next instance on the same association: %v %v", res, err)
	}
}

// rendezvousKV holds the first two attempts to create each registry key
// until both have been made: the two associations that deliver one
// instance then both try to record it first, which is the race concurrent
// duplicates make (a record made after the other's would only test the
// sequential case).
type rendezvousKV struct {
	jetstream.KeyValue
	mu      sync.Mutex
	arrived map[string]chan struct{} // key -> closed when created twice
	count   map[string]int
}

func (kv *rendezvousKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	kv.mu.Lock()
	ch := kv.arrived[key]
	if ch == nil {
		ch = make(chan struct{})
		kv.arrived[key] = ch
	}
	kv.count[key]++
	n := kv.count[key]
	if n == 2 {
		close(ch)
	}
	kv.mu.Unlock()
	if n <= 2 {
		select {
		case <-ch:
		case <-ctx.Done():
		case <-time.After(10 * time.Second): // the other association failed; the test reports it
		}
	}
	return kv.KeyValue.Create(ctx, key, value, opts...)
}

// sendConcurrently sends a[i] and b[i] at the same time over two
// associations and fails unless all are answered Success.
func sendConcurrently(t *testing.T, addr string, a, b []dicomtest.Instance) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, ins := range [][]dicomtest.Instance{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := sendAll(addr, ins)
			for j, s := range st {
				if s != dimse.StatusSuccess && err == nil {
					err = errors.New("instance " + ins[j].SOPInstanceUID + ": " + s.String())
				}
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentDuplicates: the same instances arrive over two associations
// at once. With equal bytes both get Success and one event and one object
// remain per instance; with different bytes both versions are kept and
// the one recorded second says which digest it replaces.
func TestConcurrentDuplicates(t *testing.T) {
	b := newBroker(t)
	root := t.TempDir()
	fss, err := fsstore.New(fsstore.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	r := startReplica(t, b, replicaOpts{store: fss})
	r.svc.reg.kv = &rendezvousKV{KeyValue: r.svc.reg.kv, arrived: map[string]chan struct{}{}, count: map[string]int{}}
	// Every association takes the guard's mutex before its first C-STORE:
	// taking it here orders the swap before the handlers read it.
	r.svc.guard.invalidate()

	same := dicomtest.Study(1, 5, 20<<10)
	sendConcurrently(t, r.addr, same, same)
	evs, keys := instanceEvents(t, b), objectKeys(t, root)
	for _, in := range same {
		e, k := eventsOf(evs, in.SOPInstanceUID), keysOf(keys, in.SOPInstanceUID)
		if len(e) != 1 || len(k) != 1 {
			t.Errorf("equal bytes twice at once: %d events and %d objects (%v), want 1 and 1", len(e), len(k), k)
			continue
		}
		if e[0].Object.Key != k[0] || !bytes.Equal(readObject(t, fss, k[0]), part10Of(in, "MODALITY")) {
			t.Errorf("the event names %s, the object left is %s", e[0].Object.Key, k[0])
		}
	}

	first := dicomtest.Study(1, 5, 20<<10)
	second := slices.Clone(first)
	for i := range second {
		second[i].Salt = 1
	}
	sendConcurrently(t, r.addr, first, second)
	evs, keys = instanceEvents(t, b), objectKeys(t, root)
	for _, in := range first {
		e, k := eventsOf(evs, in.SOPInstanceUID), keysOf(keys, in.SOPInstanceUID)
		if len(e) != 2 || len(k) != 2 {
			t.Errorf("different bytes at once: %d events and %d objects, want 2 and 2", len(e), len(k))
			continue
		}
		// The registry orders the versions; their events may reach the
		// stream in either order.
		first, second := e[0], e[1]
		if first.ReplacesSHA256 != "" {
			first, second = second, first
		}
		if first.ReplacesSHA256 != "" || second.ReplacesSHA256 != first.Object.SHA256 {
			t.Errorf("%s: versions %.12s and %.12s say they replace %q and %q, want \"\" for one and its digest for the other",
				in.SOPInstanceUID, e[0].Object.SHA256, e[1].Object.SHA256, e[0].ReplacesSHA256, e[1].ReplacesSHA256)
		}
	}
}

// TestSequentialNewVersion: the same instance re-sent later with other
// bytes is a new version: two objects, and the second event names the
// digest it replaces.
func TestSequentialNewVersion(t *testing.T) {
	b := newBroker(t)
	root := t.TempDir()
	store, err := fsstore.New(fsstore.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	r := startReplica(t, b, replicaOpts{store: store})
	in := dicomtest.Study(1, 1, 4000)[0]
	changed := in
	changed.Salt = 1
	allSuccess(t, send(t, r.addr, []dicomtest.Instance{in}))
	allSuccess(t, send(t, r.addr, []dicomtest.Instance{changed}))
	e, k := instanceEvents(t, b), objectKeys(t, root)
	if len(e) != 2 || len(k) != 2 {
		t.Fatalf("%d events and %d objects, want 2 and 2", len(e), len(k))
	}
	if e[0].ReplacesSHA256 != "" || e[1].ReplacesSHA256 != e[0].Object.SHA256 {
		t.Fatalf("replaces: %q then %q, want \"\" then %q", e[0].ReplacesSHA256, e[1].ReplacesSHA256, e[0].Object.SHA256)
	}
	for i, want := range []dicomtest.Instance{in, changed} {
		if !bytes.Equal(readObject(t, store, e[i].Object.Key), part10Of(want, "MODALITY")) {
			t.Errorf("version %d differs from what was sent", i+1)
		}
	}
	var rec instanceRecord
	entry, err := r.svc.reg.kv.Get(context.Background(), in.SOPInstanceUID)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(entry.Value(), &rec); err != nil || len(rec.Versions) != 2 {
		t.Fatalf("registry record %s: %v", entry.Value(), err)
	}
}

// lostAckJS is a JetStream whose next publication is stored by the server
// but reported as failed, as when the acknowledgement does not arrive in
// time (a timeout under load, a connection cut after the server got the
// message).
type lostAckJS struct {
	jetstream.JetStream
	mu   sync.Mutex
	lose int
}

func (js *lostAckJS) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ack, err := js.JetStream.PublishMsg(ctx, m, opts...)
	js.mu.Lock()
	defer js.mu.Unlock()
	if err == nil && js.lose > 0 {
		js.lose--
		return nil, nats.ErrTimeout
	}
	return ack, err
}

// TestPublishAckLost: an instance event reaches JetStream but its
// acknowledgement is lost, so the C-STORE fails and the sender sends the
// instance again. JetStream then reports the event as a duplicate of the
// first one: whatever ingest does, the event in the stream must name an
// object that exists once the re-send is answered Success.
func TestPublishAckLost(t *testing.T) {
	b := newBroker(t)
	root := t.TempDir()
	store, err := fsstore.New(fsstore.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	r := startReplica(t, b, replicaOpts{store: store})
	js, err := jetstream.New(r.nc)
	if err != nil {
		t.Fatal(err)
	}
	r.svc.pub = events.NewPublisher(&lostAckJS{JetStream: js, lose: 1}, r.svc.pub.Source())
	// Every association takes the guard's mutex before its first C-STORE:
	// taking it here orders the swap before the handler reads it.
	r.svc.guard.invalidate()

	in := dicomtest.Study(1, 1, 4000)[0]
	if st := send(t, r.addr, []dicomtest.Instance{in}); st[0] != dimse.StatusOutOfResources {
		t.Fatalf("store whose event's acknowledgement was lost: %s, want A700", st[0])
	}
	allSuccess(t, send(t, r.addr, []dicomtest.Instance{in}))
	evs := eventsOf(instanceEvents(t, b), in.SOPInstanceUID)
	if len(evs) != 1 {
		t.Fatalf("%d events, want 1", len(evs))
	}
	keys := keysOf(objectKeys(t, root), in.SOPInstanceUID)
	if !slices.Contains(keys, evs[0].Object.Key) {
		t.Fatalf("answered Success, but the object its event names, %s, is gone; objects left: %v", evs[0].Object.Key, keys)
	}
	if !bytes.Equal(readObject(t, store, evs[0].Object.Key), part10Of(in, "MODALITY")) {
		t.Fatal("the stored object differs from what was sent")
	}
}

// TestSyntheticRefused: a generated (synthetic) image coming back from an
// AE not allowed to send them gets 0124 with the reason, and nothing is
// stored or published; from an allowed AE it is stored.
func TestSyntheticRefused(t *testing.T) {
	b := newBroker(t)
	root := t.TempDir()
	store, err := fsstore.New(fsstore.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	r := startReplica(t, b, replicaOpts{store: store, cfg: Config{SyntheticAEs: []string{"RESEARCH"}}})
	obj, err := genimage.Write(nil, genimage.Image{Rows: 4, Cols: 4, Values: make([]float32, 16)},
		genimage.Params{RequestID: "req-1", Task: "synthesize", Count: 1, ModelName: "m", ModelVersion: "1", Time: time.Unix(0, 0).UTC()}, genimage.Config{})
	if err != nil {
		t.Fatal(err)
	}
	meta, n, err := part10.ParseHeader(obj.Part10)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ae   string
		want dimse.Status
	}{{"MODALITY", dimse.StatusNotAuthorized}, {"RESEARCH", dimse.StatusSuccess}} {
		conn, err := dimse.Dial(context.Background(), r.addr, dimse.ClientConfig{CallingAE: c.ae, CalledAE: "PACSFLOW"},
			[]dimse.Proposal{{AbstractSyntax: meta.MediaStorageSOPClassUID, TransferSyntaxes: []string{uid.ExplicitVRLittleEndian}}})
		if err != nil {
			t.Fatal(err)
		}
		res, err := conn.Store(context.Background(), dimse.StoreRequest{AffectedSOPClassUID: meta.MediaStorageSOPClassUID, AffectedSOPInstanceUID: obj.SOPInstanceUID},
			uid.ExplicitVRLittleEndian, bytes.NewReader(obj.Part10[n:]))
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.Release()
		if res.Status != c.want {
			t.Errorf("synthetic image from %s: %s (%s), want %s", c.ae, res.Status, res.Comment, c.want)
		}
		if c.want == dimse.StatusNotAuthorized {
			if !strings.Contains(res.Comment, "synthetic image") {
				t.Errorf("refusal comment %q does not say why", res.Comment)
			}
			if keys := objectKeys(t, root); len(keys) != 0 {
				t.Errorf("refused synthetic image stored: %v", keys)
			}
		}
	}
	if keys := objectKeys(t, root); len(keys) != 1 {
		t.Errorf("stored %v, want the one from RESEARCH", keys)
	}
}
