package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
	"github.com/pacsflow/pacsflow/pkg/dimse/ul"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/storage/fsstore"
	"github.com/pacsflow/pacsflow/pkg/storage/objstore"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

const testQuiet = 300 * time.Millisecond

// broker is an embedded JetStream shared by the replicas of a test.
type broker struct {
	ns     *natsserver.Server
	dir    string
	listen string // fixed after the first start, so clients reconnect after a restart
}

func newBroker(t *testing.T) *broker {
	t.Helper()
	b := &broker{dir: t.TempDir()}
	b.start(t)
	t.Cleanup(func() { b.ns.Shutdown() })
	return b
}

func (b *broker) start(t *testing.T) {
	t.Helper()
	if b.listen == "" {
		b.listen = "127.0.0.1:0"
	}
	ns, err := natsserver.Start(natsserver.Config{StoreDir: b.dir, Listen: b.listen})
	if err != nil {
		t.Fatal(err)
	}
	b.ns = ns
	b.listen = strings.TrimPrefix(ns.ClientURL(), "nats://")
}

// replica is one ingest service with its DICOM server.
type replica struct {
	svc   *Service
	store storage.Store
	addr  string
	nc    *nats.Conn
}

type replicaOpts struct {
	cfg     Config
	store   storage.Store
	connect func() (*nats.Conn, error)
	now     func() time.Time // the study assembler's clock
}

func startReplica(t *testing.T, b *broker, o replicaOpts) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	connect := o.connect
	if connect == nil {
		connect = func() (*nats.Conn, error) { return b.ns.Connect() }
	}
	nc, err := connect()
	if err != nil {
		t.Fatal(err)
	}
	store := o.store
	if store == nil {
		if store, err = fsstore.New(fsstore.Config{Root: t.TempDir()}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := o.cfg
	if cfg.QuietPeriod == 0 {
		cfg.QuietPeriod = testQuiet
	}
	cfg.Backend = "fs"
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.MinFreeBytes = 1
	svc, err := New(ctx, cfg, nc, store)
	if err != nil {
		t.Fatal(err)
	}
	if o.now != nil {
		svc.asm.now = o.now
	}
	srv, err := dimse.NewServer(dimse.ServerConfig{AETitle: "PACSFLOW", Store: svc, Access: svc.Authorizer(nil),
		AssociationEnded: svc.AssociationEnded, Logger: cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = srv.Serve(ctx, ln) }()
	go func() { defer wg.Done(); _ = svc.Run(ctx) }()
	t.Cleanup(func() {
		_ = srv.Close()
		cancel()
		wg.Wait()
		nc.Close()
	})
	return &replica{svc: svc, store: store, addr: ln.Addr().String(), nc: nc}
}

// send stores the instances over one association and returns the statuses.
func send(t *testing.T, addr string, ins []dicomtest.Instance) []dimse.Status {
	t.Helper()
	c, err := dimse.Dial(context.Background(), addr, dimse.ClientConfig{CallingAE: "MODALITY", CalledAE: "PACSFLOW"},
		[]dimse.Proposal{{AbstractSyntax: uid.CTImageStorage, TransferSyntaxes: []string{uid.ExplicitVRLittleEndian}}})
	if err != nil {
		t.Fatal(err)
	}
	var out []dimse.Status
	for _, in := range ins {
		res, err := c.Store(context.Background(), dimse.StoreRequest{AffectedSOPClassUID: in.SOPClassUID, AffectedSOPInstanceUID: in.SOPInstanceUID},
			uid.ExplicitVRLittleEndian, bytes.NewReader(in.DataSet()))
		if err != nil {
			t.Fatalf("store %s: %v", in.SOPInstanceUID, err)
		}
		out = append(out, res.Status)
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	return out
}

func allSuccess(t *testing.T, st []dimse.Status) {
	t.Helper()
	for i, s := range st {
		if s != dimse.StatusSuccess {
			t.Fatalf("instance %d: %s", i, s)
		}
	}
}

// eventLog reads every event of the stream as it arrives.
type eventLog struct {
	mu  sync.Mutex
	got []*events.Received
}

func watchEvents(t *testing.T, b *broker) *eventLog {
	t.Helper()
	nc, err := b.ns.Connect()
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := events.Provision(ctx, js, events.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.OrderedConsumer(ctx, "PACSFLOW", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	l := &eventLog{}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		r, err := events.Decode(m.Subject(), m.Headers(), m.Data())
		if err != nil {
			t.Errorf("undecodable event: %v", err)
			return
		}
		l.mu.Lock()
		l.got = append(l.got, r)
		l.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Stop(); nc.Close() })
	return l
}

func (l *eventLog) ofType(typ string) []*events.Received {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*events.Received
	for _, r := range l.got {
		if r.Type == typ {
			out = append(out, r)
		}
	}
	return out
}

// waitFor polls cond for up to 15 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func study(t *testing.T, r *events.Received) *events.StudyReceived {
	t.Helper()
	var d events.StudyReceived
	if err := json.Unmarshal(r.Data, &d); err != nil {
		t.Fatal(err)
	}
	return &d
}

func instanceData(t *testing.T, r *events.Received) *events.InstanceStored {
	t.Helper()
	var d events.InstanceStored
	if err := json.Unmarshal(r.Data, &d); err != nil {
		t.Fatal(err)
	}
	return &d
}

// part10Of is what storage must hold for an instance: header and data set.
func part10Of(in dicomtest.Instance, callingAE string) []byte {
	return append(part10.AppendHeader(nil, &part10.Meta{
		MediaStorageSOPClassUID: in.SOPClassUID, MediaStorageSOPInstanceUID: in.SOPInstanceUID,
		TransferSyntaxUID: uid.ExplicitVRLittleEndian, ImplementationClassUID: uid.ImplementationClassUID,
		ImplementationVersionName: uid.ImplementationVersionName, SourceApplicationEntityTitle: callingAE,
	}), in.DataSet()...)
}

func TestStudyEndToEnd(t *testing.T) {
	b := newBroker(t)
	evs := watchEvents(t, b)
	r := startReplica(t, b, replicaOpts{})
	ins := dicomtest.Study(2, 3, 4000)
	ins[4].Priority = "STAT"
	allSuccess(t, send(t, r.addr, ins))

	waitFor(t, "study received", func() bool { return len(evs.ofType(events.TypeStudyReceived)) == 1 })
	stored := evs.ofType(events.TypeInstanceStored)
	if len(stored) != len(ins) {
		t.Fatalf("%d instance events, want %d", len(stored), len(ins))
	}
	for i, e := range stored {
		d := instanceData(t, e)
		want := part10Of(ins[i], "MODALITY")
		sum := sha256.Sum256(want)
		if d.SOPInstanceUID != ins[i].SOPInstanceUID || d.Object.SHA256 != hex.EncodeToString(sum[:]) || d.Object.Size != int64(len(want)) {
			t.Fatalf("event %d: %+v", i, d)
		}
		if d.Association.CallingAE != "MODALITY" || d.Association.CalledAE != "PACSFLOW" || d.Association.ID == "" || d.Association.SourceAddress == "" {
			t.Errorf("event %d association %+v", i, d.Association)
		}
		if e.Subject != ins[i].StudyInstanceUID || e.NATSSubject != "pacs.instance.stored.CT.PACSFLOW" {
			t.Errorf("event %d subject %q on %q", i, e.Subject, e.NATSSubject)
		}
		rc, obj, err := r.store.Open(context.Background(), d.Object.Key)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, want) || obj.SHA256 != d.Object.SHA256 {
			t.Fatalf("stored object %s differs from what was sent", d.Object.Key)
		}
	}
	s := study(t, evs.ofType(events.TypeStudyReceived)[0])
	if s.NumSeries != 2 || s.NumInstances != 6 || len(s.Series) != 2 || len(s.Series[0].Instances) != 3 || s.Trigger != "quiet-period" || s.Generation != 1 {
		t.Fatalf("manifest: %+v", s)
	}
	if s.Study.StudyInstanceUID != ins[0].StudyInstanceUID || s.Patient.Name != "DOE^JANE" || s.Study.AccessionNumber != "ACC-1" {
		t.Errorf("study attributes %+v %+v", s.Study, s.Patient)
	}
	if s.Series[1].Instances[2].SOPInstanceUID != ins[5].SOPInstanceUID || s.Series[0].SeriesNumber != 1 {
		t.Errorf("manifest order: %+v", s.Series)
	}
	if lag := time.Since(s.LastReceivedAt); lag < testQuiet {
		t.Errorf("study reported %s after its last instance, before the quiet period", lag)
	}

	// The same study again: duplicates, no new event, no update.
	allSuccess(t, send(t, r.addr, ins))
	time.Sleep(3 * testQuiet)
	if n := len(evs.ofType(events.TypeInstanceStored)); n != len(ins) {
		t.Fatalf("re-sending produced %d instance events in all, want %d", n, len(ins))
	}
	if n := len(evs.ofType(events.TypeStudyUpdated)); n != 0 {
		t.Fatalf("re-sending produced %d study updates", n)
	}

	// A late instance, and one re-sent with other bytes: a study update
	// with both, the changed one marked as a new version.
	late := dicomtest.Study(1, 1, 1000)[0]
	late.StudyInstanceUID, late.SeriesInstanceUID = ins[0].StudyInstanceUID, ins[0].SeriesInstanceUID
	late.SOPInstanceUID = ins[0].SeriesInstanceUID + ".99"
	changed := ins[1]
	changed.Salt = 1
	allSuccess(t, send(t, r.addr, []dicomtest.Instance{late, changed}))
	waitFor(t, "study updated", func() bool { return len(evs.ofType(events.TypeStudyUpdated)) == 1 })
	u := study(t, evs.ofType(events.TypeStudyUpdated)[0])
	if u.Generation != 2 || u.NumInstances != 7 || len(u.Series) != 1 || len(u.Series[0].Instances) != 2 {
		t.Fatalf("update: %+v", u)
	}
	all := evs.ofType(events.TypeInstanceStored)
	if v := instanceData(t, all[len(all)-1]); v.SOPInstanceUID != changed.SOPInstanceUID || v.ReplacesSHA256 == "" {
		t.Fatalf("new version event %+v", v)
	}
}

// TestAssociationEndsDuringEvaluation: an association that ends while the
// study's evaluation (which saw it open) runs gets its study reported after
// the quiet period, not after the maximum wait. The clock the evaluation
// reads holds it until the end is recorded and has re-armed the study.
func TestAssociationEndsDuringEvaluation(t *testing.T) {
	b := newBroker(t)
	evs := watchEvents(t, b)
	evaluating, recorded := make(chan struct{}), make(chan struct{})
	var once sync.Once
	r := startReplica(t, b, replicaOpts{cfg: Config{MaxWait: time.Hour}, now: func() time.Time {
		once.Do(func() { close(evaluating); <-recorded })
		return time.Now()
	}})
	ins := dicomtest.Study(1, 2, 1000)
	c, err := dial(r.addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range ins {
		if res, err := storeOne(c, in); err != nil || res.Status != dimse.StatusSuccess {
			t.Fatalf("store: %v %v", res.Status, err)
		}
	}
	select {
	case <-evaluating:
	case <-time.After(15 * time.Second):
		t.Fatal("the study was never evaluated")
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	key := headerKey(ins[0].StudyInstanceUID)
	waitFor(t, "the association's end re-arming the study", func() bool {
		r.svc.asm.mu.Lock()
		defer r.svc.asm.mu.Unlock()
		return r.svc.asm.changed[key]
	})
	close(recorded)
	waitFor(t, "study received", func() bool { return len(evs.ofType(events.TypeStudyReceived)) == 1 })
	if s := study(t, evs.ofType(events.TypeStudyReceived)[0]); s.Trigger != events.TriggerQuietPeriod || s.NumInstances != 2 {
		t.Fatalf("study reported by %s with %d instances", s.Trigger, s.NumInstances)
	}
}

// TestInstanceEventMergedAgain: an instance event merged again (delivered
// anew after a merge that failed once its entry had landed, as when an
// acknowledgement is lost in a leader election) lists its instance in no
// second report, and the study's next update is its generation 2.
func TestInstanceEventMergedAgain(t *testing.T) {
	b := newBroker(t)
	evs := watchEvents(t, b)
	r := startReplica(t, b, replicaOpts{})
	ins := dicomtest.Study(1, 3, 1000)
	allSuccess(t, send(t, r.addr, ins))
	waitFor(t, "study received", func() bool { return len(evs.ofType(events.TypeStudyReceived)) == 1 })

	uid := ins[0].StudyInstanceUID
	entries, err := r.svc.asm.entries(t.Context(), headerKey(uid))
	if err != nil || len(entries) != len(ins) {
		t.Fatalf("%d entries, %v", len(entries), err)
	}
	if err := r.svc.asm.mergeStudy(t.Context(), uid, entries); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * testQuiet)
	if n := len(evs.ofType(events.TypeStudyUpdated)); n != 0 {
		t.Fatalf("merging the same events again published %d study updates", n)
	}

	late := dicomtest.Study(1, 1, 1000)[0]
	late.StudyInstanceUID, late.SeriesInstanceUID = uid, ins[0].SeriesInstanceUID
	late.SOPInstanceUID = ins[0].SeriesInstanceUID + ".99"
	allSuccess(t, send(t, r.addr, []dicomtest.Instance{late}))
	waitFor(t, "study updated", func() bool { return len(evs.ofType(events.TypeStudyUpdated)) == 1 })
	u := study(t, evs.ofType(events.TypeStudyUpdated)[0])
	if u.Generation != 2 || len(u.Series) != 1 || len(u.Series[0].Instances) != 1 || u.Series[0].Instances[0].SOPInstanceUID != late.SOPInstanceUID {
		t.Fatalf("update: generation %d, series %+v; want generation 2 listing %s alone", u.Generation, u.Series, late.SOPInstanceUID)
	}
}

func TestFailureStatuses(t *testing.T) {
	b := newBroker(t)
	r := startReplica(t, b, replicaOpts{cfg: Config{MaxInstanceBytes: 64 << 10}})
	in := dicomtest.Study(1, 1, 1000)[0]
	c, err := dimse.Dial(context.Background(), r.addr, dimse.ClientConfig{CallingAE: "MODALITY", CalledAE: "PACSFLOW"},
		[]dimse.Proposal{{AbstractSyntax: uid.CTImageStorage, TransferSyntaxes: []string{uid.ExplicitVRLittleEndian}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	big := dicomtest.Study(1, 1, 200<<10)[0]
	cases := []struct {
		name string
		req  dimse.StoreRequest
		data []byte
		want dimse.Status
	}{
		{"SOP instance differs from the command", dimse.StoreRequest{AffectedSOPClassUID: in.SOPClassUID, AffectedSOPInstanceUID: in.SOPInstanceUID + ".1"}, in.DataSet(), dimse.StatusDataSetMismatch},
		{"not a data set", dimse.StoreRequest{AffectedSOPClassUID: in.SOPClassUID, AffectedSOPInstanceUID: in.SOPInstanceUID}, bytes.Repeat([]byte{0xFF}, 300), dimse.StatusCannotUnderstand},
		{"too large", dimse.StoreRequest{AffectedSOPClassUID: big.SOPClassUID, AffectedSOPInstanceUID: big.SOPInstanceUID}, big.DataSet(), dimse.StatusOutOfResources},
	}
	for _, tc := range cases {
		res, err := c.Store(context.Background(), tc.req, uid.ExplicitVRLittleEndian, bytes.NewReader(tc.data))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if res.Status != tc.want {
			t.Errorf("%s: %s (%s), want %s", tc.name, res.Status, res.Comment, tc.want)
		}
	}
	bad := in
	bad.StudyInstanceUID = "1.2.3..4"
	res, err := c.Store(context.Background(), dimse.StoreRequest{AffectedSOPClassUID: in.SOPClassUID, AffectedSOPInstanceUID: in.SOPInstanceUID}, uid.ExplicitVRLittleEndian, bytes.NewReader(bad.DataSet()))
	if err != nil || !res.Status.IsFailure() {
		t.Fatalf("invalid study UID: %v %v", res, err)
	}
}

// Two replicas on one JetStream receive parts of the same study over
// concurrent associations: exactly one study received, with all instances.
func TestTwoReplicasOneStudy(t *testing.T) {
	b := newBroker(t)
	evs := watchEvents(t, b)
	r1 := startReplica(t, b, replicaOpts{cfg: Config{Replica: "one"}})
	r2 := startReplica(t, b, replicaOpts{cfg: Config{Replica: "two"}})
	ins := dicomtest.Study(2, 10, 2000)
	var wg sync.WaitGroup
	for i, addr := range []string{r1.addr, r2.addr, r1.addr, r2.addr} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			allSuccess(t, send(t, addr, ins[i*5:(i+1)*5]))
		}()
	}
	wg.Wait()
	waitFor(t, "study received", func() bool { return len(evs.ofType(events.TypeStudyReceived)) >= 1 })
	time.Sleep(5 * testQuiet)
	got := evs.ofType(events.TypeStudyReceived)
	if len(got) != 1 {
		t.Fatalf("%d study received events, want 1", len(got))
	}
	if s := study(t, got[0]); s.NumInstances != 20 || len(s.Associations) != 4 {
		t.Fatalf("manifest has %d instances from %d associations, want 20 from 4", s.NumInstances, len(s.Associations))
	}
	if n := len(evs.ofType(events.TypeStudyUpdated)); n != 0 {
		t.Fatalf("%d study updates", n)
	}
}

// The broker stops in the middle of a study: an open association gets
// A700, a new one a transient rejection, nothing unstored gets Success;
// when the broker is back, ingest recovers without restart.
func TestBrokerOutage(t *testing.T) {
	b := newBroker(t)
	url := b.ns.ClientURL()
	r := startReplica(t, b, replicaOpts{connect: func() (*nats.Conn, error) {
		return nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	}})
	ins := dicomtest.Study(1, 6, 1000)
	c, err := dimse.Dial(context.Background(), r.addr, dimse.ClientConfig{CallingAE: "MODALITY", CalledAE: "PACSFLOW"},
		[]dimse.Proposal{{AbstractSyntax: uid.CTImageStorage, TransferSyntaxes: []string{uid.ExplicitVRLittleEndian}}})
	if err != nil {
		t.Fatal(err)
	}
	store := func(in dicomtest.Instance) dimse.Status {
		res, err := c.Store(context.Background(), dimse.StoreRequest{AffectedSOPClassUID: in.SOPClassUID, AffectedSOPInstanceUID: in.SOPInstanceUID},
			uid.ExplicitVRLittleEndian, bytes.NewReader(in.DataSet()))
		if err != nil {
			t.Fatal(err)
		}
		return res.Status
	}
	if st := store(ins[0]); st != dimse.StatusSuccess {
		t.Fatalf("before the outage: %s", st)
	}

	b.ns.Shutdown()
	waitFor(t, "the client to notice", func() bool { return r.nc.Status() != nats.CONNECTED })
	if st := store(ins[1]); st != dimse.StatusOutOfResources {
		t.Fatalf("during the outage: %s, want A700", st)
	}
	_ = c.Release()
	r.svc.guard.invalidate()
	_, err = dimse.Dial(context.Background(), r.addr, dimse.ClientConfig{CallingAE: "MODALITY", CalledAE: "PACSFLOW"},
		[]dimse.Proposal{{AbstractSyntax: uid.CTImageStorage, TransferSyntaxes: []string{uid.ExplicitVRLittleEndian}}})
	var rj *ul.RejectedError
	if !errors.As(err, &rj) || rj.Result != pdu.RejectTransient {
		t.Fatalf("new association during the outage: %v, want a transient rejection", err)
	}

	b.start(t) // same store directory and port
	waitFor(t, "ingest ready again", func() bool {
		r.svc.guard.invalidate()
		return r.svc.Ready(context.Background()) == nil
	})
	allSuccess(t, send(t, r.addr, ins[1:]))
}

// The object store backend goes through the same path.
func TestObjectStoreBackend(t *testing.T) {
	b := newBroker(t)
	evs := watchEvents(t, b)
	nc, err := b.ns.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	os, err := objstore.New(ctx, js, objstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	r := startReplica(t, b, replicaOpts{store: os})
	ins := dicomtest.Study(1, 3, 300<<10)
	allSuccess(t, send(t, r.addr, ins))
	waitFor(t, "study received", func() bool { return len(evs.ofType(events.TypeStudyReceived)) == 1 })
	for i, e := range evs.ofType(events.TypeInstanceStored) {
		d := instanceData(t, e)
		rc, _, err := os.Open(ctx, d.Object.Key)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, part10Of(ins[i], "MODALITY")) {
			t.Fatalf("object %s differs", d.Object.Key)
		}
	}
}
