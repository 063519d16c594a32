package dimse_test

// Interoperability tests against independent DICOM implementations running
// as separate processes: DCMTK (echoscu, storescu, storescp, dcmconv,
// dcmodify) and pynetdicom (testdata/pynetdicom_scu.py). Our side runs in
// process. The tests need DCMTK in PATH and PACSFLOW_PYTHON naming a Python
// with pynetdicom==3.0.4 and pydicom==3.0.2; ./scripts/test.sh provides both.

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pacsflow/pacsflow/internal/dicomtest"

	grail "github.com/grailbio/go-dicom"
	"github.com/grailbio/go-dicom/dicomtag"
	suyash "github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/dimse/ul"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

const (
	serverAE = "PACSFLOW"
	// waitTimeout bounds every wait for a peer process or a server event, so
	// that a hung peer fails the test instead of hanging it. Nothing is
	// expected to take more than a few seconds.
	waitTimeout = 2 * time.Minute
)

// syntax is a native transfer syntax with the DCMTK options that write a
// file in it and that make storescu send such a file in it.
type syntax struct {
	name     string
	uid      string
	dcmconv  string
	storescu string
}

// syntaxes are the four native transfer syntaxes. storescu proposes the
// syntax its option names in a presentation context of its own, so the
// server accepts exactly that syntax and storescu sends each file without
// converting it.
var syntaxes = []syntax{
	{"ExplicitLE", uid.ExplicitVRLittleEndian, "+te", "-xe"},
	{"ImplicitLE", uid.ImplicitVRLittleEndian, "+ti", "-xi"},
	{"ExplicitBE", uid.ExplicitVRBigEndian, "+tb", "-xb"},
	{"Deflated", uid.DeflatedExplicitVRLittleEndian, "+td", "-xd"},
}

// requireTools fails the test unless every named DCMTK tool is in PATH.
func requireTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("DCMTK's %s is not in PATH: install DCMTK (apt-get install dcmtk) or run ./scripts/test.sh", n)
		}
	}
}

// python returns the interpreter that has pynetdicom.
func python(t *testing.T) string {
	t.Helper()
	p := os.Getenv("PACSFLOW_PYTHON")
	if p == "" {
		t.Fatal("PACSFLOW_PYTHON is not set: run ./scripts/test.sh, which creates .venv with pynetdicom==3.0.4 and pydicom==3.0.2 " +
			"and sets it, or create such a venv and set PACSFLOW_PYTHON=<venv>/bin/python")
	}
	return p
}

// sample is a Part 10 file split into its meta information and data set.
type sample = dicomtest.Sample

func readSample(t *testing.T, path string) sample { return dicomtest.ReadSample(t, path) }

// originalSamples reads the sample files of dicomtest.SamplePaths.
func originalSamples(t *testing.T) []sample {
	t.Helper()
	var s []sample
	for _, p := range dicomtest.SamplePaths(t) {
		s = append(s, readSample(t, p))
	}
	return s
}

// makeCorpus writes each original sample in each native transfer syntax,
// under a new SOP Instance UID so that every file of the corpus is a
// distinct instance, and returns the files by transfer syntax UID.
//
// DCMTK's storescu and storescp (without +B) re-encode what they send and
// store (explicit sequence and item lengths, unpadded empty values...).
// dcmconv writes the same encoding, so on these files the re-encoding
// changes nothing and the bytes can be compared end to end.
func makeCorpus(t *testing.T) map[string][]sample {
	t.Helper()
	requireTools(t, "dcmconv", "dcmodify")
	dir := t.TempDir()
	corpus := map[string][]sample{}
	tmp := filepath.Join(dir, "tmp.dcm")
	for i, orig := range originalSamples(t) {
		src, err := os.ReadFile(orig.Path)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range syntaxes {
			// dcmodify edits in place, and the module cache is read-only.
			if err := os.WriteFile(tmp, src, 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("dcmodify", "-nb", "-gin", tmp).CombinedOutput(); err != nil {
				t.Fatalf("dcmodify %s: %v\n%s", orig.Path, err, out)
			}
			dst := filepath.Join(dir, fmt.Sprintf("%d-%s.dcm", i+1, s.name))
			if out, err := exec.Command("dcmconv", s.dcmconv, tmp, dst).CombinedOutput(); err != nil {
				t.Fatalf("dcmconv %s %s: %v\n%s", s.dcmconv, orig.Path, err, out)
			}
			corpus[s.uid] = append(corpus[s.uid], readSample(t, dst))
		}
	}
	return corpus
}

// sentByDCMTK is the data set of s as DCMTK puts it on the wire: DCMTK
// pads an odd-length deflated stream with a NUL byte, as DICOM data sets
// have even lengths, while dcmconv writes it unpadded into files.
func sentByDCMTK(s sample) []byte {
	if s.Meta.TransferSyntaxUID == uid.DeflatedExplicitVRLittleEndian && len(s.DataSet)%2 == 1 {
		return append(bytes.Clone(s.DataSet), 0)
	}
	return s.DataSet
}

// evenLength drops the samples whose data set has an odd length: DCMTK
// refuses them ("Odd Fragment Length") and our Client sends them unpadded;
// TestClientStoreOddLengthDeflatedToDCMTK covers that case.
func evenLength(in []sample) []sample {
	var out []sample
	for _, s := range in {
		if len(s.DataSet)%2 == 0 {
			out = append(out, s)
		}
	}
	return out
}

// proc is a peer process whose output is kept for assertions and failures.
type proc struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer // read only once done is closed
	done           chan struct{}
	err            error
}

// startProc starts a peer process; it is killed at the end of the test if
// it is still running. DCMTK gets TCP_NODELAY=1: without it DCMTK leaves
// Nagle's algorithm on and stalls about 40 ms on every message.
func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(name, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "TCP_NODELAY=1")
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *proc) stop() {
	_ = p.cmd.Process.Kill() // fails harmlessly once the process has exited
	<-p.done
}

// output is what the process wrote, stdout then stderr; call it once done.
func (p *proc) output() string { return p.stdout.String() + p.stderr.String() }

// wait waits for the process to exit and returns its output and exit error.
func (p *proc) wait(t *testing.T) (string, error) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		p.stop()
		t.Fatalf("%s did not finish within %s; output:\n%s", p.name, waitTimeout, p.output())
	}
	return p.output(), p.err
}

// run runs a peer process to completion.
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	return startProc(t, name, args...).wait(t)
}

// mustRun runs a peer process that must succeed and returns its output.
func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// logSink collects the server's JSON log records so that tests can wait for
// and inspect what the server reported.
type logSink struct {
	mu      sync.Mutex
	records []map[string]any
	changed chan struct{} // closed at the next record
}

func newLogSink(t *testing.T) *logSink {
	s := &logSink{changed: make(chan struct{})}
	t.Cleanup(func() {
		if t.Failed() {
			s.mu.Lock()
			defer s.mu.Unlock()
			for _, r := range s.records {
				t.Logf("server log: %v", r)
			}
		}
	})
	return s
}

// Write receives one record: slog's JSON handler writes each in one call.
func (s *logSink) Write(p []byte) (int, error) {
	var rec map[string]any
	if err := json.Unmarshal(p, &rec); err != nil {
		return 0, err
	}
	s.mu.Lock()
	s.records = append(s.records, rec)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return len(p), nil
}

// wait returns the first record with message msg whose attributes include
// attrs, waiting for it if needed.
func (s *logSink) wait(t *testing.T, msg string, attrs map[string]any) map[string]any {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		s.mu.Lock()
		for _, r := range s.records {
			if r["msg"] == msg && hasAttrs(r, attrs) {
				s.mu.Unlock()
				return r
			}
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("the server did not log %q with %v within %s", msg, attrs, waitTimeout)
		}
	}
}

func hasAttrs(r, attrs map[string]any) bool {
	for k, v := range attrs {
		if r[k] != v {
			return false
		}
	}
	return true
}

// received is one C-STORE as the handler saw it.
type received struct {
	ind  dimse.StoreIndication
	data []byte
	err  error // what reading the data set ended with, if not io.EOF
}

// recorder is a StoreHandler that keeps every data set in memory.
type recorder struct {
	mu  sync.Mutex
	got []received
}

func (r *recorder) HandleStore(_ context.Context, ind *dimse.StoreIndication, data io.Reader) (dimse.Result, error) {
	b, err := io.ReadAll(data)
	r.mu.Lock()
	r.got = append(r.got, received{ind: *ind, data: b, err: err})
	r.mu.Unlock()
	if err != nil {
		return dimse.Result{}, err
	}
	return dimse.Result{Status: dimse.StatusSuccess}, nil
}

func (r *recorder) all() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

// bySOPInstance indexes what was received; an instance received twice fails the test.
func (r *recorder) bySOPInstance(t *testing.T) map[string]received {
	t.Helper()
	m := map[string]received{}
	for _, g := range r.all() {
		if _, dup := m[g.ind.AffectedSOPInstanceUID]; dup {
			t.Errorf("instance %s received twice", g.ind.AffectedSOPInstanceUID)
		}
		m[g.ind.AffectedSOPInstanceUID] = g
	}
	return m
}

type testServer struct {
	port  string // on 127.0.0.1
	logs  *logSink
	store *recorder
}

// startServer serves cfg, with AE title serverAE and a recorder as its
// store, on a free loopback port until the test ends.
func startServer(t *testing.T, cfg dimse.ServerConfig) *testServer {
	t.Helper()
	ts := &testServer{logs: newLogSink(t), store: &recorder{}}
	cfg.AETitle, cfg.Store = serverAE, ts.store
	cfg.Logger = slog.New(slog.NewJSONHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := dimse.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, ts.port, _ = net.SplitHostPort(ln.Addr().String())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		select {
		case err := <-served:
			if !errors.Is(err, dimse.ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("Serve did not return within %s of Close", waitTimeout)
		}
	})
	return ts
}

// checkReceived compares what the handler got with the sample that was
// sent, whose data set went on the wire as want.
func checkReceived(t *testing.T, got received, s sample, want []byte) {
	t.Helper()
	name := filepath.Base(s.Path)
	if got.err != nil {
		t.Errorf("%s: reading the data set failed: %v", name, got.err)
		return
	}
	if got.ind.TransferSyntaxUID != s.Meta.TransferSyntaxUID {
		t.Errorf("%s: received in %s, want %s", name, uid.Name(got.ind.TransferSyntaxUID), uid.Name(s.Meta.TransferSyntaxUID))
	}
	if got.ind.AffectedSOPClassUID != s.Meta.MediaStorageSOPClassUID {
		t.Errorf("%s: SOP class %s, want %s", name, got.ind.AffectedSOPClassUID, s.Meta.MediaStorageSOPClassUID)
	}
	if !bytes.Equal(got.data, want) {
		t.Errorf("%s: received data set of %d bytes differs from the %d bytes sent (first difference at byte %d)",
			name, len(got.data), len(want), firstDifference(got.data, want))
		return
	}
	checkParses(t, name, &got.ind, got.data)
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// checkParses stores the data set as a Part 10 file the way a storage SCP
// does and checks that two independent parsers, suyashkumar/dicom and
// grailbio/go-dicom, read all of it and find the instance announced in the
// C-STORE-RQ.
func checkParses(t *testing.T, name string, ind *dimse.StoreIndication, data []byte) {
	t.Helper()
	part10File := func(ts string, ds []byte) []byte {
		return append(part10.AppendHeader(nil, &part10.Meta{
			MediaStorageSOPClassUID:    ind.AffectedSOPClassUID,
			MediaStorageSOPInstanceUID: ind.AffectedSOPInstanceUID,
			TransferSyntaxUID:          ts,
			ImplementationClassUID:     uid.ImplementationClassUID,
		}), ds...)
	}
	want := ind.AffectedSOPInstanceUID

	file := part10File(ind.TransferSyntaxUID, data)
	if got, err := suyashSOPInstance(file); err != nil {
		t.Errorf("%s: suyashkumar/dicom: %v", name, err)
	} else if got != want {
		t.Errorf("%s: suyashkumar/dicom reads SOP Instance UID %q, want %q", name, got, want)
	}

	// grailbio/go-dicom reads a deflated data set as if it were not
	// deflated, so it gets the inflated one: Deflated Explicit VR Little
	// Endian is Explicit VR Little Endian compressed with raw deflate.
	if ind.TransferSyntaxUID == uid.DeflatedExplicitVRLittleEndian {
		inflated, err := io.ReadAll(flate.NewReader(bytes.NewReader(data)))
		if err != nil {
			t.Errorf("%s: inflate: %v", name, err)
			return
		}
		file = part10File(uid.ExplicitVRLittleEndian, inflated)
	}
	if got, err := grailSOPInstance(file); err != nil {
		t.Errorf("%s: grailbio/go-dicom: %v", name, err)
	} else if got != want {
		t.Errorf("%s: grailbio/go-dicom reads SOP Instance UID %q, want %q", name, got, want)
	}
}

// suyashSOPInstance parses a whole Part 10 file with suyashkumar/dicom.
func suyashSOPInstance(file []byte) (sop string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	ds, err := suyash.Parse(bytes.NewReader(file), int64(len(file)), nil)
	if err != nil {
		return "", err
	}
	e, err := ds.FindElementByTag(tag.SOPInstanceUID)
	if err != nil {
		return "", err
	}
	v := suyash.MustGetStrings(e.Value)
	if len(v) != 1 {
		return "", fmt.Errorf("SOP Instance UID with %d values", len(v))
	}
	return strings.TrimRight(v[0], "\x00 "), nil
}

// grailSOPInstance parses a whole Part 10 file with grailbio/go-dicom.
func grailSOPInstance(file []byte) (sop string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	ds, err := grail.ReadDataSet(bytes.NewReader(file), grail.ReadOptions{})
	if err != nil {
		return "", err
	}
	e, err := ds.FindElementByTag(dicomtag.SOPInstanceUID)
	if err != nil {
		return "", err
	}
	v, err := e.GetString()
	return strings.TrimRight(v, "\x00 "), err
}

// TestEchoSCUFromDCMTK: DCMTK's echoscu verifies our SCP, once and with 50
// C-ECHOs in one association.
func TestEchoSCUFromDCMTK(t *testing.T) {
	requireTools(t, "echoscu")
	srv := startServer(t, dimse.ServerConfig{})
	t.Run("once", func(t *testing.T) {
		out := mustRun(t, "echoscu", "-v", "-aet", "ECHOSCU", "-aec", serverAE, "127.0.0.1", srv.port)
		if n := strings.Count(out, "Received Echo Response (Success)"); n != 1 {
			t.Errorf("%d successful echo responses, want 1:\n%s", n, out)
		}
	})
	t.Run("repeat50", func(t *testing.T) {
		out := mustRun(t, "echoscu", "-v", "--repeat", "50", "-aet", "ECHOSCU", "-aec", serverAE, "127.0.0.1", srv.port)
		if n := strings.Count(out, "Received Echo Response (Success)"); n != 50 {
			t.Errorf("%d successful echo responses, want 50:\n%s", n, out)
		}
	})
	srv.logs.wait(t, "association released", map[string]any{"calling_ae": "ECHOSCU", "called_ae": serverAE})
}

// TestStoreSCUFromDCMTK: DCMTK's storescu sends the corpus to our SCP, each
// transfer syntax in one association; the handler gets every data set
// exactly as sent, in that transfer syntax, and the received data sets
// parse with two independent parsers.
func TestStoreSCUFromDCMTK(t *testing.T) {
	requireTools(t, "storescu")
	corpus := makeCorpus(t)
	for _, s := range syntaxes {
		t.Run(s.name, func(t *testing.T) {
			srv := startServer(t, dimse.ServerConfig{})
			files := corpus[s.uid]
			args := []string{s.storescu, "-aet", "STORESCU", "-aec", serverAE, "127.0.0.1", srv.port}
			for _, f := range files {
				args = append(args, f.Path)
			}
			mustRun(t, "storescu", args...)

			got := srv.store.bySOPInstance(t)
			if len(got) != len(files) {
				t.Errorf("received %d instances, want %d", len(got), len(files))
			}
			assocs := map[string]bool{}
			for _, f := range files {
				g, ok := got[f.Meta.MediaStorageSOPInstanceUID]
				if !ok {
					t.Errorf("%s was not received", filepath.Base(f.Path))
					continue
				}
				assocs[g.ind.Association.ID] = true
				checkReceived(t, g, f, sentByDCMTK(f))
			}
			if len(assocs) != 1 {
				t.Errorf("instances came on %d associations, want all on one", len(assocs))
			}
		})
	}
}

// TestStoreSCUFromDCMTKConcurrent: four storescu processes, one per
// transfer syntax, send to one server at the same time.
func TestStoreSCUFromDCMTKConcurrent(t *testing.T) {
	requireTools(t, "storescu")
	corpus := makeCorpus(t)
	srv := startServer(t, dimse.ServerConfig{})
	var procs []*proc
	for _, s := range syntaxes {
		args := []string{s.storescu, "-aet", "STORESCU", "-aec", serverAE, "127.0.0.1", srv.port}
		for _, f := range corpus[s.uid] {
			args = append(args, f.Path)
		}
		procs = append(procs, startProc(t, "storescu", args...))
	}
	for _, p := range procs {
		if out, err := p.wait(t); err != nil {
			t.Errorf("storescu: %v\n%s", err, out)
		}
	}
	got := srv.store.bySOPInstance(t)
	assocs := map[string]bool{}
	total := 0
	for _, s := range syntaxes {
		for _, f := range corpus[s.uid] {
			total++
			g, ok := got[f.Meta.MediaStorageSOPInstanceUID]
			if !ok {
				t.Errorf("%s was not received", filepath.Base(f.Path))
				continue
			}
			assocs[g.ind.Association.ID] = true
			checkReceived(t, g, f, sentByDCMTK(f))
		}
	}
	if len(got) != total {
		t.Errorf("received %d instances, want %d", len(got), total)
	}
	if len(assocs) != len(syntaxes) {
		t.Errorf("instances came on %d associations, want %d", len(assocs), len(syntaxes))
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// startStoreSCP runs DCMTK's storescp (AE title STORESCP) writing into dir
// and returns its address once it accepts connections. The port is picked
// free and then handed over, so another process may take it in between:
// then storescp exits and another port is tried.
func startStoreSCP(t *testing.T, dir string, opts ...string) string {
	t.Helper()
	requireTools(t, "storescp")
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		addr := net.JoinHostPort("127.0.0.1", port)
		p := startProc(t, "storescp", append(append([]string{"-aet", "STORESCP"}, opts...), "-od", dir, port)...)
		if waitListening(t, p, addr) {
			t.Cleanup(func() {
				if t.Failed() {
					p.stop() // its output may be read once it has exited
					t.Logf("storescp output:\n%s", p.output())
				}
			})
			return addr
		}
		if attempt == 5 {
			out, err := p.wait(t)
			t.Fatalf("storescp did not start (%v):\n%s", err, out)
		}
	}
}

// waitListening polls addr until it accepts a connection; false means that
// the process exited first.
func waitListening(t *testing.T, p *proc, addr string) bool {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		select {
		case <-p.done:
			return false
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return true
		}
		if time.Now().After(deadline) {
			p.stop()
			t.Fatalf("%s did not accept connections on %s within %s:\n%s", p.name, addr, waitTimeout, p.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// storeWithClient sends the samples over one association of our Client,
// proposing one presentation context per SOP class and transfer syntax.
func storeWithClient(t *testing.T, addr, calledAE string, samples []sample) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var props []dimse.Proposal
	seen := map[[2]string]bool{}
	for _, s := range samples {
		k := [2]string{s.Meta.MediaStorageSOPClassUID, s.Meta.TransferSyntaxUID}
		if !seen[k] {
			seen[k] = true
			props = append(props, dimse.Proposal{AbstractSyntax: k[0], TransferSyntaxes: []string{k[1]}})
		}
	}
	c, err := dimse.Dial(ctx, addr, dimse.ClientConfig{CallingAE: "PACSFLOW-SCU", CalledAE: calledAE}, props)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range samples {
		req := dimse.StoreRequest{AffectedSOPClassUID: s.Meta.MediaStorageSOPClassUID, AffectedSOPInstanceUID: s.Meta.MediaStorageSOPInstanceUID}
		res, err := c.Store(ctx, req, s.Meta.TransferSyntaxUID, bytes.NewReader(s.DataSet))
		if err != nil {
			_ = c.Abort()
			t.Fatalf("store %s: %v", filepath.Base(s.Path), err)
		}
		if !res.Status.IsSuccess() {
			t.Errorf("store %s: %s %s", filepath.Base(s.Path), res.Status, res.Comment)
		}
	}
	if err := c.Release(); err != nil {
		t.Errorf("release: %v", err)
	}
}

// readStored reads the Part 10 files in dir by SOP Instance UID.
func readStored(t *testing.T, dir string) map[string]sample {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]sample{}
	for _, e := range entries {
		s := readSample(t, filepath.Join(dir, e.Name()))
		m[s.Meta.MediaStorageSOPInstanceUID] = s
	}
	return m
}

// TestClientStoreToDCMTK: our Client sends to DCMTK's storescp, which
// stores what arrives; its files hold the data sets we sent, in their
// transfer syntax. In normal mode storescp decodes and re-encodes (the
// corpus is in DCMTK's encoding, so that is the identity); with +B it
// writes the bytes as received, so the original files, whose encoding
// DCMTK would change, are sent too.
func TestClientStoreToDCMTK(t *testing.T) {
	corpus := makeCorpus(t)
	var all []sample
	for _, s := range syntaxes {
		all = append(all, evenLength(corpus[s.uid])...)
	}
	for _, mode := range []struct {
		name    string
		opts    []string
		samples []sample
	}{
		{"normal", []string{"+xa"}, all},
		{"bit-preserving", []string{"+B", "+xa"}, append(evenLength(originalSamples(t)), all...)},
	} {
		t.Run(mode.name, func(t *testing.T) {
			dir := t.TempDir()
			addr := startStoreSCP(t, dir, mode.opts...)
			storeWithClient(t, addr, "STORESCP", mode.samples)
			stored := readStored(t, dir)
			if len(stored) != len(mode.samples) {
				t.Errorf("storescp stored %d files, want %d", len(stored), len(mode.samples))
			}
			for _, s := range mode.samples {
				name := filepath.Base(s.Path)
				got, ok := stored[s.Meta.MediaStorageSOPInstanceUID]
				switch {
				case !ok:
					t.Errorf("%s: not stored by storescp", name)
				case got.Meta.TransferSyntaxUID != s.Meta.TransferSyntaxUID:
					t.Errorf("%s: stored in %s, want %s", name, uid.Name(got.Meta.TransferSyntaxUID), uid.Name(s.Meta.TransferSyntaxUID))
				case !bytes.Equal(got.DataSet, s.DataSet):
					t.Errorf("%s: stored data set of %d bytes differs from the %d bytes sent (first difference at byte %d)",
						name, len(got.DataSet), len(s.DataSet), firstDifference(got.DataSet, s.DataSet))
				}
			}
		})
	}
}

// TestClientStoreOddLengthDeflatedToDCMTK sends a deflated data set of odd
// length, as stored in testdata/6.dcm and as dcmconv writes deflated files.
// DICOM data sets have even lengths: DCMTK's storescu (and pydicom, when it
// writes files) pad an odd deflated stream with a trailing NUL, and DCMTK's
// storescp aborts the association on an odd PDV fragment ("DIMSE: Odd
// Fragment Length"). Our Client sends the stream unpadded, so this test
// fails until Client.Store pads it.
func TestClientStoreOddLengthDeflatedToDCMTK(t *testing.T) {
	var odd []sample
	for _, s := range originalSamples(t) {
		if len(s.DataSet)%2 == 1 {
			odd = append(odd, s)
		}
	}
	if len(odd) == 0 {
		t.Fatal("testdata has no data set of odd length any more; pick another sample")
	}
	dir := t.TempDir()
	addr := startStoreSCP(t, dir, "+B", "+xa")
	storeWithClient(t, addr, "STORESCP", odd)
	stored := readStored(t, dir)
	for _, s := range odd {
		got, ok := stored[s.Meta.MediaStorageSOPInstanceUID]
		if !ok {
			t.Errorf("%s: not stored by storescp", filepath.Base(s.Path))
			continue
		}
		if want := sentByDCMTK(s); !bytes.Equal(got.DataSet, want) {
			t.Errorf("%s: stored %d bytes, want the %d-byte data set padded to %d bytes", filepath.Base(s.Path), len(got.DataSet), len(s.DataSet), len(want))
		}
	}
}

// TestClientEchoToDCMTK: our Client verifies DCMTK's storescp.
func TestClientEchoToDCMTK(t *testing.T) {
	addr := startStoreSCP(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := dimse.Dial(ctx, addr, dimse.ClientConfig{CallingAE: "PACSFLOW-SCU", CalledAE: "STORESCP"}, []dimse.Proposal{{
		AbstractSyntax: uid.Verification, TransferSyntaxes: []string{uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		st, err := c.Echo(ctx)
		if err != nil {
			_ = c.Abort()
			t.Fatalf("echo %d: %v", i+1, err)
		}
		if !st.IsSuccess() {
			t.Errorf("echo %d: %s", i+1, st)
		}
	}
	if err := c.Release(); err != nil {
		t.Errorf("release: %v", err)
	}
}

// pynetdicomResult is what testdata/pynetdicom_scu.py prints.
type pynetdicomResult struct {
	Established bool `json:"established"`
	Contexts    []struct {
		ID             int      `json:"id"`
		AbstractSyntax string   `json:"abstract_syntax"`
		Proposed       []string `json:"proposed"`
		Accepted       bool     `json:"accepted"`
		TransferSyntax string   `json:"transfer_syntax"`
	} `json:"contexts"`
	EchoStatus *int `json:"echo_status"`
	Stores     []struct {
		File   string `json:"file"`
		Status *int   `json:"status"`
		Error  string `json:"error"`
	} `json:"stores"`
	SOPInstanceUID string `json:"sop_instance_uid"`
	DataBytesSent  int    `json:"data_bytes_sent"`
	DataSetLength  int    `json:"data_set_length"`
}

// runPynetdicom runs the pynetdicom SCU with interpreter py against srv
// and decodes its report.
func runPynetdicom(t *testing.T, py string, srv *testServer, mode string, files []sample) pynetdicomResult {
	t.Helper()
	args := []string{filepath.Join("testdata", "pynetdicom_scu.py"), "127.0.0.1", srv.port, serverAE, mode}
	for _, f := range files {
		args = append(args, f.Path)
	}
	p := startProc(t, py, args...)
	text, err := p.wait(t)
	if err != nil {
		t.Fatalf("pynetdicom_scu.py %s: %v\n%s", mode, err, text)
	}
	var res pynetdicomResult
	if err := json.Unmarshal(p.stdout.Bytes(), &res); err != nil {
		t.Fatalf("pynetdicom_scu.py %s printed no report (%v):\n%s", mode, err, text)
	}
	if !res.Established {
		t.Fatalf("pynetdicom could not associate:\n%s", text)
	}
	return res
}

// TestPynetdicomStore: pynetdicom proposes many presentation contexts,
// echoes and sends files in every native transfer syntax as they are
// encoded (including the odd-length deflated 6.dcm, which it does not pad);
// our SCP accepts its preferred syntax where several are proposed and
// receives every data set intact.
func TestPynetdicomStore(t *testing.T) {
	py := python(t)
	corpus := makeCorpus(t)
	files := originalSamples(t)
	for _, s := range syntaxes[1:] {
		for _, f := range corpus[s.uid] {
			if f.Meta.MediaStorageSOPClassUID == uid.MRImageStorage {
				files = append(files, f)
			}
		}
	}
	srv := startServer(t, dimse.ServerConfig{})
	res := runPynetdicom(t, py, srv, "store", files)

	for _, c := range res.Contexts {
		switch {
		case !c.Accepted:
			t.Errorf("context %d (%s) was rejected", c.ID, uid.Name(c.AbstractSyntax))
		case c.AbstractSyntax == uid.Verification:
		case len(c.Proposed) == 1 && c.TransferSyntax != c.Proposed[0]:
			t.Errorf("context %d proposing only %s was accepted with %s", c.ID, uid.Name(c.Proposed[0]), uid.Name(c.TransferSyntax))
		case len(c.Proposed) > 1 && c.TransferSyntax != uid.ExplicitVRLittleEndian:
			// Explicit VR Little Endian is the server's first preference.
			t.Errorf("context %d proposing %v was accepted with %s, want Explicit VR Little Endian", c.ID, c.Proposed, uid.Name(c.TransferSyntax))
		}
	}
	if res.EchoStatus == nil || *res.EchoStatus != 0 {
		t.Errorf("C-ECHO status %v, want 0", res.EchoStatus)
	}
	if len(res.Stores) != len(files) {
		t.Fatalf("pynetdicom reports %d C-STOREs, want %d", len(res.Stores), len(files))
	}
	for _, st := range res.Stores {
		if st.Status == nil || *st.Status != 0 {
			t.Errorf("%s: status %v, error %q", filepath.Base(st.File), st.Status, st.Error)
		}
	}
	got := srv.store.bySOPInstance(t)
	for _, f := range files {
		g, ok := got[f.Meta.MediaStorageSOPInstanceUID]
		if !ok {
			t.Errorf("%s was not received", filepath.Base(f.Path))
			continue
		}
		if g.ind.Association.CallingAE != "PYNETDICOM" {
			t.Errorf("%s: calling AE %q, want PYNETDICOM", filepath.Base(f.Path), g.ind.Association.CallingAE)
		}
		checkReceived(t, g, f, f.DataSet)
	}
}

// TestPynetdicomAbortMidDataSet: pynetdicom starts a C-STORE of a 7.5 MB
// data set and aborts the association after a few fragments. The handler
// must see a read error, not io.EOF, nothing may count as stored, and the
// server must go on serving.
func TestPynetdicomAbortMidDataSet(t *testing.T) {
	py := python(t)
	samples := originalSamples(t)
	var large sample
	for _, s := range samples {
		if len(s.DataSet) > len(large.DataSet) {
			large = s
		}
	}
	srv := startServer(t, dimse.ServerConfig{})
	res := runPynetdicom(t, py, srv, "abort-mid-dataset", []sample{large})
	if res.SOPInstanceUID != large.Meta.MediaStorageSOPInstanceUID || res.DataBytesSent == 0 || res.DataBytesSent >= res.DataSetLength {
		t.Fatalf("pynetdicom did not send part of the data set: %+v", res)
	}

	ended := srv.logs.wait(t, "association ended", map[string]any{"calling_ae": "PYNETDICOM"})
	if ended["stored"] != 0.0 {
		t.Errorf("server reports %v instances stored on the aborted association, want 0", ended["stored"])
	}
	srv.logs.wait(t, "instance not stored: data set incomplete", map[string]any{"sop_instance": large.Meta.MediaStorageSOPInstanceUID})
	got := srv.store.all()
	if len(got) != 1 {
		t.Fatalf("handler called %d times, want once", len(got))
	}
	g := got[0]
	var abort *ul.AbortError
	switch {
	case g.err == nil:
		t.Errorf("the handler read the aborted data set to io.EOF: %d bytes", len(g.data))
	case errors.Is(g.err, io.EOF) || errors.Is(g.err, io.ErrUnexpectedEOF):
		t.Errorf("read error %v is an EOF", g.err)
	case !errors.As(g.err, &abort) || !abort.Remote:
		t.Errorf("read error %v does not report the peer's A-ABORT", g.err)
	}
	if !bytes.Equal(g.data, large.DataSet[:res.DataBytesSent]) {
		t.Errorf("handler read %d bytes before the error, want the %d bytes sent", len(g.data), res.DataBytesSent)
	}

	// The server goes on: a new association stores an instance.
	small := samples[2]
	res = runPynetdicom(t, py, srv, "store", []sample{small})
	if len(res.Stores) != 1 || res.Stores[0].Status == nil || *res.Stores[0].Status != 0 {
		t.Fatalf("store after the abort: %+v", res.Stores)
	}
	checkReceived(t, srv.store.bySOPInstance(t)[small.Meta.MediaStorageSOPInstanceUID], small, small.DataSet)
}

// TestDCMTKRejected: associations that the server must reject, from
// DCMTK's echoscu, and the positive controls on the same servers.
func TestDCMTKRejected(t *testing.T) {
	requireTools(t, "echoscu")
	echo := func(t *testing.T, srv *testServer, calling, called string) (string, error) {
		t.Helper()
		return run(t, "echoscu", "-aet", calling, "-aec", called, "127.0.0.1", srv.port)
	}
	t.Run("unknown called AE", func(t *testing.T) {
		srv := startServer(t, dimse.ServerConfig{})
		out, err := echo(t, srv, "ECHOSCU", "NOT-"+serverAE)
		if err == nil {
			t.Errorf("echoscu succeeded with an unknown called AE:\n%s", out)
		}
		if !strings.Contains(out, "Called AE Title Not Recognized") {
			t.Errorf("echoscu does not report the called AE rejection:\n%s", out)
		}
		srv.logs.wait(t, "association rejected", map[string]any{"calling_ae": "ECHOSCU", "called_ae": "NOT-" + serverAE})
		if out, err := echo(t, srv, "ECHOSCU", serverAE); err != nil {
			t.Errorf("echoscu with the right called AE: %v\n%s", err, out)
		}
	})
	t.Run("allow-list", func(t *testing.T) {
		allow, err := dimse.ParseAllowList("GOODSCU,NETSCU@10.0.0.0/8")
		if err != nil {
			t.Fatal(err)
		}
		srv := startServer(t, dimse.ServerConfig{Access: allow})
		for _, c := range []struct{ calling, why string }{
			{"BADSCU", `calling AE "BADSCU" is not on the allow-list`},
			{"NETSCU", `calling AE "NETSCU" is not allowed from 127.0.0.1:`}, // listed for 10.0.0.0/8 only
		} {
			out, err := echo(t, srv, c.calling, serverAE)
			if err == nil {
				t.Errorf("echoscu as %s succeeded:\n%s", c.calling, out)
			}
			if !strings.Contains(out, "Calling AE Title Not Recognized") {
				t.Errorf("echoscu as %s does not report the calling AE rejection:\n%s", c.calling, out)
			}
			rec := srv.logs.wait(t, "association rejected", map[string]any{"calling_ae": c.calling})
			if why, _ := rec["why"].(string); !strings.HasPrefix(why, c.why) {
				t.Errorf("rejection of %s logged why=%q, want %q...", c.calling, why, c.why)
			}
		}
		if out, err := echo(t, srv, "GOODSCU", serverAE); err != nil {
			t.Errorf("echoscu as GOODSCU, which is allowed: %v\n%s", err, out)
		}
	})
}
