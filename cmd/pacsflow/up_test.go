package main_test

// End-to-end tests of `pacsflow up` and `pacsflow ingest`: the binary runs
// as a separate process with its embedded (or an external) NATS JetStream,
// DCMTK's storescu sends, and the test reads the events from JetStream and
// the objects through the storage backends.

import (
	"bytes"
	"flag"
	"maps"
	"math/rand/v2"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

var crashSeed = flag.Uint64("crash-seed", 0, "seed of TestUpCrashKill9's kill points; 0 takes one from the clock")

// duplicatesRE finds the count of duplicate C-STOREs in /metrics.
var duplicatesRE = regexp.MustCompile(`(?m)^pacsflow_ingest_instances_total\{outcome="duplicate"\} (\d+)$`)

// TestUpEndToEnd: `pacsflow up` receives a study of 3 series from DCMTK's
// storescu over one association, for each storage backend.
func TestUpEndToEnd(t *testing.T) {
	requireTools(t, "storescu")
	bin := buildPacsflow(t)
	for _, backend := range []string{"objectstore", "fs"} {
		t.Run(backend, func(t *testing.T) { testUpEndToEnd(t, bin, backend) })
	}
}

func testUpEndToEnd(t *testing.T, bin, backend string) {
	data := t.TempDir()
	up := startPipeline(t, bin, upArgs(data, backend)...)
	js := connectJS(t, up.natsURL)
	ins := dicomtest.Study(3, 5, 0)
	// From 2 KB to about 2 MB: below and above the 64 KiB that ingest reads
	// ahead, storescu's PDU size and the object store's 1 MiB chunks.
	for i := range ins {
		ins[i].PixelBytes = 2000 + i*140_000
	}
	files := writeInstances(t, ins)
	storeSCU(t, up.dicomAddr, files).mustSucceed(t)

	evs := waitEvents(t, js, "pacs.study.received", countType(events.TypeStudyReceived, 1))
	store := openStore(t, backend, data, js)
	stored := checkInstanceEvents(t, evs, ins, backend)
	assoc := stored[ins[0].SOPInstanceUID].Association.ID
	for _, in := range ins {
		d := stored[in.SOPInstanceUID]
		if d.Association.ID != assoc {
			t.Errorf("%s: association %s, the first instance's %s: one storescu run is one association", in.SOPInstanceUID, d.Association.ID, assoc)
		}
		meta, ds, err := readStored(store, d.Object)
		switch {
		case err != nil:
			t.Errorf("%s: %v", in.SOPInstanceUID, err)
		case !bytes.Equal(ds, in.DataSet()):
			t.Errorf("%s: stored data set of %d bytes differs from the %d bytes sent", in.SOPInstanceUID, len(ds), len(in.DataSet()))
		case meta.MediaStorageSOPInstanceUID != in.SOPInstanceUID || meta.MediaStorageSOPClassUID != in.SOPClassUID ||
			meta.TransferSyntaxUID != uid.ExplicitVRLittleEndian || meta.SourceApplicationEntityTitle != "STORESCU":
			t.Errorf("%s: file meta information %+v", in.SOPInstanceUID, meta)
		}
	}
	studies := ofType(evs, events.TypeStudyReceived)
	if len(studies) != 1 {
		t.Fatalf("%d pacs.study.received events, want 1", len(studies))
	}
	checkManifest(t, studies[0], ins, stored, []string{assoc})
	waitFor(t, "the study's latency on /metrics", func() bool {
		_, metrics := httpGet(t, up.httpURL+"/metrics")
		return strings.Contains(metrics, `pacsflow_study_latency_seconds_count{stage="completed"} 1`+"\n")
	})

	// The same study again: all duplicates, so no event at all.
	before := len(evs)
	storeSCU(t, up.dicomAddr, files).mustSucceed(t)
	// A C-STORE is counted before it is answered, so all are counted now.
	_, metrics := httpGet(t, up.httpURL+"/metrics")
	if m := duplicatesRE.FindStringSubmatch(metrics); m == nil || m[1] != strconv.Itoa(len(ins)) {
		t.Errorf("after re-sending %d instances, /metrics says %v duplicates:\n%s", len(ins), m, grepLines(metrics, "pacsflow_ingest_instances_total"))
	}
	if n := strings.Count(up.stderr.String(), "duplicate instance"); n != len(ins) {
		t.Errorf("%d log lines about duplicate instances, want %d:\n%s", n, len(ins), up.stderr.String())
	}
	// Nothing must come; waiting well past the quiet period gives a wrong
	// study event the time to show.
	time.Sleep(6 * upQuiet)
	if after := readEvents(t, js); len(after) != before {
		for _, e := range after[before:] {
			t.Errorf("re-sending the study published %s %s", e.Type, e.ID)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, up.httpURL+path); code != 200 {
			t.Errorf("GET %s: %d %s", path, code, body)
		}
	}

	// SIGINT stops it cleanly; a restart on the same folder has the same
	// events and objects.
	up.interrupt(t)
	if !strings.Contains(up.stderr.String(), "msg=stopped") {
		t.Errorf("no log line about stopping:\n%s", up.stderr.String())
	}
	up = up.restart(t)
	js = connectJS(t, up.natsURL)
	again := readEvents(t, js)
	if len(again) != before {
		t.Errorf("after a restart %d events, before %d", len(again), before)
	}
	for i := range min(len(again), len(evs)) {
		if again[i].ID != evs[i].ID {
			t.Errorf("event %d after the restart is %s, before %s", i, again[i].ID, evs[i].ID)
		}
	}
	store = openStore(t, backend, data, js)
	for _, in := range ins {
		if _, ds, err := readStored(store, stored[in.SOPInstanceUID].Object); err != nil || !bytes.Equal(ds, in.DataSet()) {
			t.Errorf("%s after a restart: %v", in.SOPInstanceUID, err)
		}
	}
	up.interrupt(t)
}

// checkInstanceEvents checks that there is exactly one pacs.instance.stored
// event per instance sent by storescu, with the instance's attributes, and
// returns their data by SOP Instance UID.
func checkInstanceEvents(t *testing.T, evs []*events.Received, ins []dicomtest.Instance, backend string) map[string]*events.InstanceStored {
	t.Helper()
	stored := map[string]*events.InstanceStored{}
	for _, e := range ofType(evs, events.TypeInstanceStored) {
		d := decodeData[events.InstanceStored](t, e)
		if stored[d.SOPInstanceUID] != nil {
			t.Errorf("a second pacs.instance.stored event for %s", d.SOPInstanceUID)
		}
		stored[d.SOPInstanceUID] = d
		if want := "instance/" + d.SOPInstanceUID + "/" + d.Object.SHA256; e.ID != want {
			t.Errorf("event ID %s, want %s", e.ID, want)
		}
		if e.Subject != d.Study.StudyInstanceUID || e.NATSSubject != "pacs.instance.stored.CT.PACSFLOW" {
			t.Errorf("%s: subject %q on %q", d.SOPInstanceUID, e.Subject, e.NATSSubject)
		}
	}
	if len(stored) != len(ins) {
		t.Fatalf("pacs.instance.stored for %d instances, want %d", len(stored), len(ins))
	}
	for _, in := range ins {
		d := stored[in.SOPInstanceUID]
		if d == nil {
			t.Fatalf("no pacs.instance.stored for %s", in.SOPInstanceUID)
		}
		if d.Study.StudyInstanceUID != in.StudyInstanceUID || d.SeriesInstanceUID != in.SeriesInstanceUID || d.SOPClassUID != in.SOPClassUID ||
			d.Modality != "CT" || d.SeriesNumber != in.SeriesNumber || d.InstanceNumber != in.InstanceNumber ||
			d.Patient.ID != in.PatientID || d.Study.AccessionNumber != in.AccessionNumber || d.TransferSyntaxUID != uid.ExplicitVRLittleEndian {
			t.Errorf("%s: instance attributes %+v", in.SOPInstanceUID, d)
		}
		if d.Object.Backend != backend || d.Object.Key == "" || len(d.Object.SHA256) != 64 || d.Object.Size <= int64(len(in.DataSet())) || d.ReplacesSHA256 != "" {
			t.Errorf("%s: object %+v replaces %q", in.SOPInstanceUID, d.Object, d.ReplacesSHA256)
		}
		if backend == "objectstore" && d.Object.Bucket != "pacsflow-instances" {
			t.Errorf("%s: bucket %q", in.SOPInstanceUID, d.Object.Bucket)
		}
		a := d.Association
		if host, _, err := net.SplitHostPort(a.SourceAddress); err != nil || host != "127.0.0.1" || a.CallingAE != "STORESCU" || a.CalledAE != "PACSFLOW" || a.ID == "" {
			t.Errorf("%s: association %+v", in.SOPInstanceUID, a)
		}
	}
	return stored
}

// checkManifest checks a pacs.study.received event of the whole study ins,
// stored as the events in stored say, over the associations assocs.
func checkManifest(t *testing.T, e *events.Received, ins []dicomtest.Instance, stored map[string]*events.InstanceStored, assocs []string) {
	t.Helper()
	s := decodeData[events.StudyReceived](t, e)
	study := ins[0].StudyInstanceUID
	if e.ID != "study/"+study+"/1" || e.Subject != study || e.NATSSubject != "pacs.study.received.CT.PACSFLOW" {
		t.Errorf("study event %s, subject %q on %q", e.ID, e.Subject, e.NATSSubject)
	}
	slices.Sort(assocs)
	if s.Study.StudyInstanceUID != study || s.Patient.Name != "DOE^JANE" || s.Study.AccessionNumber != "ACC-1" || s.Generation != 1 || s.Trigger != "quiet-period" ||
		!slices.Equal(s.Modalities, []string{"CT"}) || !slices.Equal(s.CallingAEs, []string{"STORESCU"}) || !slices.Equal(s.CalledAEs, []string{"PACSFLOW"}) ||
		!slices.Equal(s.Associations, assocs) {
		t.Errorf("study attributes: %+v", s)
	}
	// The manifest lists the series by number and their instances by number.
	var total int64
	var first, last time.Time
	series := map[string][]dicomtest.Instance{}
	var order []string
	for _, in := range ins {
		if series[in.SeriesInstanceUID] == nil {
			order = append(order, in.SeriesInstanceUID)
		}
		series[in.SeriesInstanceUID] = append(series[in.SeriesInstanceUID], in)
		d := stored[in.SOPInstanceUID]
		total += d.Object.Size
		if first.IsZero() || d.ReceivedAt.Before(first) {
			first = d.ReceivedAt
		}
		if d.ReceivedAt.After(last) {
			last = d.ReceivedAt
		}
	}
	if s.NumSeries != len(order) || s.NumInstances != len(ins) || s.Bytes != total || len(s.Series) != len(order) {
		t.Fatalf("manifest: %d series, %d instances, %d bytes, %d series listed; want %d, %d, %d", s.NumSeries, s.NumInstances, s.Bytes, len(s.Series), len(order), len(ins), total)
	}
	if !s.FirstReceivedAt.Equal(first) || !s.LastReceivedAt.Equal(last) {
		t.Errorf("manifest received from %s to %s, the events from %s to %s", s.FirstReceivedAt, s.LastReceivedAt, first, last)
	}
	for i, sm := range s.Series {
		want := series[order[i]]
		var size int64
		for _, in := range want {
			size += stored[in.SOPInstanceUID].Object.Size
		}
		if sm.SeriesInstanceUID != order[i] || sm.SeriesNumber != want[0].SeriesNumber || sm.Modality != "CT" || sm.NumInstances != len(want) || sm.Bytes != size || len(sm.Instances) != len(want) {
			t.Errorf("series %d: %s number %d, %d instances listed, counts %d and %d bytes; want %s number %d, %d instances, %d bytes",
				i, sm.SeriesInstanceUID, sm.SeriesNumber, len(sm.Instances), sm.NumInstances, sm.Bytes, order[i], want[0].SeriesNumber, len(want), size)
			continue
		}
		for j, ref := range sm.Instances {
			in := want[j]
			d := stored[in.SOPInstanceUID]
			if ref.SOPInstanceUID != in.SOPInstanceUID || ref.SOPClassUID != in.SOPClassUID || ref.InstanceNumber != in.InstanceNumber ||
				ref.TransferSyntaxUID != uid.ExplicitVRLittleEndian || ref.Object != d.Object || !ref.ReceivedAt.Equal(d.ReceivedAt) {
				t.Errorf("series %d instance %d: %+v, want %s stored as %+v", i, j, ref, in.SOPInstanceUID, d.Object)
			}
		}
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestUpRefusesNonLoopback: `pacsflow up` will not accept associations
// beyond loopback from any calling AE: it exits non-zero before listening
// for DICOM, pointing to --allow; with an allow-list it starts.
func TestUpRefusesNonLoopback(t *testing.T) {
	bin := buildPacsflow(t)
	args := []string{"up", "--data", t.TempDir(), "--dicom-addr", "0.0.0.0:0", "--nats-listen", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--model", ""}
	p := start(t, bin, args...)
	err := p.wait(t)
	if code := exitCode(err); code == 0 || code == -1 {
		t.Fatalf("pacsflow up on 0.0.0.0 without --allow: %v, want a non-zero exit\nstdout:\n%s", err, p.stdout.String())
	}
	if out := p.stderr.String(); !strings.Contains(out, "--allow") || !strings.Contains(out, "--allow-any-ae") {
		t.Errorf("the refusal does not point to --allow and --allow-any-ae:\n%s", out)
	}
	if dicomLineRE.MatchString(p.stdout.String()) {
		t.Errorf("pacsflow up listened for DICOM before refusing:\n%s", p.stdout.String())
	}
	// The same with an allow-list (of loopback only) starts.
	startPipeline(t, bin, append(args, "--allow", "STORESCU@127.0.0.1")...).interrupt(t)
}

// TestUpGracefulShutdown: SIGINT while storescu sends lets the association
// finish: every instance is answered Success, pacsflow exits 0, and after
// a restart the study is reported whole.
func TestUpGracefulShutdown(t *testing.T) {
	requireTools(t, "storescu")
	bin := buildPacsflow(t)
	data := t.TempDir()
	up := startPipeline(t, bin, upArgs(data, "objectstore")...)
	ins := dicomtest.Study(1, 150, 16<<10)
	scu := storeSCU(t, up.dicomAddr, writeInstances(t, ins), "-d")
	for !strings.Contains(scu.stderr.String(), "C-STORE RSP") && !exited(scu) {
		time.Sleep(time.Millisecond)
	}
	// Whether the association was still open is logged, not required: on a
	// fast machine it may have ended already.
	t.Logf("SIGINT after %d of %d responses", strings.Count(scu.stderr.String(), "C-STORE RSP"), len(ins))
	up.interrupt(t)
	scu.mustSucceed(t)
	if ok, err := storeSCUSuccesses(scu.stderr.String()); err != nil || len(ok) != len(ins) {
		t.Fatalf("storescu saw %d Successes of %d (%v)", len(ok), len(ins), err)
	}
	if !strings.Contains(up.stderr.String(), "shutting down") {
		t.Errorf("no log line about shutting down:\n%s", up.stderr.String())
	}
	up = up.restart(t)
	js := connectJS(t, up.natsURL)
	evs := waitEvents(t, js, "pacs.study.received", countType(events.TypeStudyReceived, 1))
	stored := checkInstanceEvents(t, evs, ins, "objectstore")
	checkManifest(t, ofType(evs, events.TypeStudyReceived)[0], ins, stored, []string{stored[ins[0].SOPInstanceUID].Association.ID})
	up.interrupt(t)
}

// TestUpCrashKill9: `pacsflow up` is killed with SIGKILL at random points
// while storescu sends, 20 times on the same data folder; every instance
// storescu saw answered Success is then stored, with its event.
func TestUpCrashKill9(t *testing.T) {
	requireTools(t, "storescu")
	bin := buildPacsflow(t)
	seed := *crashSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (again with: go test -run TestUpCrashKill9 ./cmd/pacsflow -crash-seed=%d)", seed, seed)
	for i, backend := range []string{"fs", "objectstore"} {
		t.Run(backend, func(t *testing.T) { testCrash(t, bin, backend, rand.New(rand.NewPCG(seed, uint64(i)))) })
	}
}

func testCrash(t *testing.T, bin, backend string, rng *rand.Rand) {
	const iterations = 20
	data := t.TempDir()
	sent := map[string]dicomtest.Instance{} // every instance sent, by SOP Instance UID
	acked := map[string]bool{}              // those storescu saw Success for
	// A study whose association broke is sent again with the next one, as
	// a modality would: its instances stored before the crash are
	// duplicates then.
	var retry []dicomtest.Instance
	for it := range iterations {
		up := startPipeline(t, bin, upArgs(data, backend)...)
		study := dicomtest.Study(2, 20, 16<<10)
		batch := append(slices.Clone(retry), study...)
		for _, in := range batch {
			sent[in.SOPInstanceUID] = in
		}
		ok, at, scuErr := killMidSend(t, up, batch, rng, 5*time.Millisecond)
		for _, sop := range ok {
			acked[sop] = true
		}
		retry = nil
		if scuErr != nil {
			retry = study
		}
		t.Logf("iteration %2d: killed %s; storescu: %d of %d Success, exit %v", it+1, at, len(ok), len(batch), scuErr)
	}

	up := startPipeline(t, bin, upArgs(data, backend)...)
	js := connectJS(t, up.natsURL)
	store := openStore(t, backend, data, js)
	withEvents, repeated, lost := reconcileKills(t, js, store, sent, acked)
	if repeated > 0 {
		t.Errorf("%d second events for the same bytes", repeated)
	}
	t.Logf("%d instances sent, %d answered Success, %d with events, %d lost", len(sent), len(acked), withEvents, lost)
	up.interrupt(t)
}

// exited tells whether the process has exited, without waiting.
func exited(p *process) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// TestIngestTwoProcesses: two `pacsflow ingest` processes on one external
// NATS JetStream each receive half of a study at the same time: one
// pacs.study.received lists the instances of both associations, and no
// update follows.
func TestIngestTwoProcesses(t *testing.T) {
	requireTools(t, "storescu")
	bin := buildPacsflow(t)
	ns, err := natsserver.Start(natsserver.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown) // registered first, so it runs after the processes are gone
	const quiet = time.Second
	var procs []*pipeline
	for range 2 {
		procs = append(procs, startPipeline(t, bin, "ingest", "--nats-url", ns.ClientURL(), "--data", t.TempDir(),
			"--dicom-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--quiet-period", quiet.String(), "--min-free-bytes", "1048576"))
	}
	ins := dicomtest.Study(2, 10, 20_000)
	// Alternate instances go to each process, so each series is split too.
	var halves [2][]dicomtest.Instance
	for i, in := range ins {
		halves[i%2] = append(halves[i%2], in)
	}
	files := [2][]string{writeInstances(t, halves[0]), writeInstances(t, halves[1])}
	// Both associations at once.
	scus := []*process{storeSCU(t, procs[0].dicomAddr, files[0]), storeSCU(t, procs[1].dicomAddr, files[1])}
	for _, p := range scus {
		p.mustSucceed(t)
	}

	js := connectJS(t, ns.ClientURL())
	waitEvents(t, js, "pacs.study.received", countType(events.TypeStudyReceived, 1))
	// A second report or an update would come within a quiet period or so.
	time.Sleep(3 * quiet)
	evs := readEvents(t, js)
	stored := checkInstanceEvents(t, evs, ins, "objectstore")
	assocs := map[string]bool{}
	for _, d := range stored {
		assocs[d.Association.ID] = true
	}
	if len(assocs) != 2 {
		t.Fatalf("the instances came over %d associations, want 2", len(assocs))
	}
	studies := ofType(evs, events.TypeStudyReceived)
	if len(studies) != 1 {
		t.Fatalf("%d pacs.study.received events, want 1", len(studies))
	}
	checkManifest(t, studies[0], ins, stored, slices.Collect(maps.Keys(assocs)))
	if u := ofType(evs, events.TypeStudyUpdated); len(u) != 0 {
		t.Errorf("%d pacs.study.updated events, want none", len(u))
	}
	for _, p := range procs {
		p.interrupt(t)
	}
}
