package main_test

// Helpers of the pipeline tests (up_test.go): running `pacsflow up` and
// `pacsflow ingest` as processes, writing instances for DCMTK to send,
// reading storescu's log, and reading events and objects back.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/storage/fsstore"
	"github.com/pacsflow/pacsflow/pkg/storage/objstore"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// eventTimeout bounds every wait for events; generous, so that a slow
// machine only makes the test slower.
const eventTimeout = time.Minute

// pipeline is a running `pacsflow up` or `pacsflow ingest`, with the
// addresses it printed.
type pipeline struct {
	*process
	bin       string
	args      []string
	dicomAddr string // HOST:PORT
	natsURL   string // nats://HOST:PORT
	httpURL   string // http://HOST:PORT
}

var (
	dicomLineRE = regexp.MustCompile(`(?m)^DICOM SCP \S+ listening on (\S+)$`)
	natsLineRE  = regexp.MustCompile(`(?m)^NATS (?:\(embedded.*\) listening on|at) (nats://\S+)$`)
	httpLineRE  = regexp.MustCompile(`(?m)^HTTP .* listening on (http://\S+)$`)
	// The storage line comes last, once everything listens.
	storageLineRE = regexp.MustCompile(`(?m)^storage: .*$`)
)

// startPipeline runs `pacsflow ARGS...` (up or ingest) and returns once it
// has printed where it listens.
func startPipeline(t *testing.T, bin string, args ...string) *pipeline {
	t.Helper()
	p := &pipeline{process: start(t, bin, args...), bin: bin, args: args}
	deadline := time.After(waitTimeout)
	for {
		out := p.stdout.String()
		if storageLineRE.MatchString(out) {
			for _, f := range []struct {
				re  *regexp.Regexp
				dst *string
			}{{dicomLineRE, &p.dicomAddr}, {natsLineRE, &p.natsURL}, {httpLineRE, &p.httpURL}} {
				m := f.re.FindStringSubmatch(out)
				if m == nil {
					t.Fatalf("pacsflow %s: no line matching %s in its output:\n%s", args[0], f.re, out)
				}
				*f.dst = m[1]
			}
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("pacsflow %s exited (%v) before listening\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), p.err, out, p.stderr.String())
		case <-deadline:
			t.Fatalf("pacsflow %s did not listen within %s\nstdout:\n%s\nstderr:\n%s", args[0], waitTimeout, out, p.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// upQuiet is the quiet period of the pipelines under test: short, to keep
// the tests fast.
const upQuiet = 500 * time.Millisecond

// upArgs are the arguments of `pacsflow up` on free loopback ports with a
// short quiet period. The free space threshold is lowered so that the tests
// do not depend on how full this machine's disk is.
func upArgs(data, backend string, extra ...string) []string {
	return append([]string{"up", "--data", data, "--storage", backend,
		"--dicom-addr", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--quiet-period", upQuiet.String(), "--min-free-bytes", "1048576", "--model", ""}, extra...)
}

// restart starts the same command again (new ports).
func (p *pipeline) restart(t *testing.T) *pipeline {
	t.Helper()
	return startPipeline(t, p.bin, p.args...)
}

// interrupt sends SIGINT and fails the test unless the process exits 0.
func (p *pipeline) interrupt(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	p.mustSucceed(t)
}

// storeSCU starts DCMTK's storescu (calling AE STORESCU) sending files to
// the pipeline's DICOM port over one association. -R proposes only the
// SOP classes of the files.
func storeSCU(t *testing.T, addr string, files []string, opts ...string) *process {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{"-R", "-aet", "STORESCU", "-aec", "PACSFLOW"}, opts...), host, port)
	return start(t, "storescu", append(args, files...)...)
}

// writeInstances writes the instances as Part 10 files (Explicit VR Little
// Endian) into a new folder, in order, and returns their paths.
func writeInstances(t *testing.T, ins []dicomtest.Instance) []string {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for i, in := range ins {
		b := part10.AppendHeader(nil, &part10.Meta{
			MediaStorageSOPClassUID: in.SOPClassUID, MediaStorageSOPInstanceUID: in.SOPInstanceUID,
			TransferSyntaxUID: uid.ExplicitVRLittleEndian, ImplementationClassUID: uid.ImplementationClassUID,
		})
		p := filepath.Join(dir, fmt.Sprintf("%04d.dcm", i))
		if err := os.WriteFile(p, append(b, in.DataSet()...), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// killMidSend sends batch to p with storescu -d and kills p with SIGKILL
// after a random number of C-STORE responses (all of them at most: then in
// the quiet period) plus a random delay below maxDelay, a few C-STOREs, so
// that the kill falls anywhere in the handling of an instance on any
// machine. It returns the SOP Instance UIDs storescu saw answered Success,
// where the kill fell, and storescu's exit error.
func killMidSend(t *testing.T, p *pipeline, batch []dicomtest.Instance, rng *rand.Rand, maxDelay time.Duration) (ok []string, at string, scuErr error) {
	t.Helper()
	scu := storeSCU(t, p.dicomAddr, writeInstances(t, batch), "-d")
	responses := rng.IntN(len(batch) + 1)
	delay := time.Duration(rng.Int64N(int64(maxDelay)))
	for strings.Count(scu.stderr.String(), "C-STORE RSP") < responses && !exited(scu) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(delay)
	if exited(p.process) {
		t.Fatalf("pacsflow %s exited by itself (%v) before the kill:\n%s", p.args[0], p.err, p.stderr.String())
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.done
	scuErr = scu.wait(t)
	return successes(t, scu), fmt.Sprintf("after %2d responses + %5dµs", responses, delay.Microseconds()), scuErr
}

// reconcileKills checks what a kill -9 loop left: every pacs.instance.stored
// event, acknowledged to storescu or not, names an object that holds what
// was sent, and every SOP Instance UID storescu saw answered Success (acked)
// has an event (those without are lost, and errors). It returns how many
// instances have events, how many events repeat the bytes of an earlier one
// (an instance stored before a kill and sent again), and how many
// acknowledged instances were lost.
func reconcileKills(t *testing.T, js jetstream.JetStream, store storage.Store, sent map[string]dicomtest.Instance, acked map[string]bool) (withEvents, repeated, lost int) {
	t.Helper()
	versions := map[string]map[string]bool{} // SOP Instance UID -> SHA-256 of its events
	for _, e := range ofType(readEvents(t, js), events.TypeInstanceStored) {
		d := decodeData[events.InstanceStored](t, e)
		if versions[d.SOPInstanceUID] == nil {
			versions[d.SOPInstanceUID] = map[string]bool{}
		}
		if versions[d.SOPInstanceUID][d.Object.SHA256] {
			repeated++
		}
		versions[d.SOPInstanceUID][d.Object.SHA256] = true
		in, known := sent[d.SOPInstanceUID]
		_, ds, err := readStored(store, d.Object)
		switch {
		case !known:
			t.Errorf("an event for %s, which was never sent", d.SOPInstanceUID)
		case err != nil:
			t.Errorf("event %s: %v", e.ID, err)
		case !bytes.Equal(ds, in.DataSet()):
			t.Errorf("event %s: the stored data set differs from what was sent", e.ID)
		}
	}
	for sop := range acked {
		if len(versions[sop]) == 0 {
			lost++
			t.Errorf("%s: storescu saw Success, but there is no pacs.instance.stored event", sop)
		}
	}
	if len(acked) == 0 {
		t.Error("storescu saw no Success at all: the kill points never fell after a C-STORE")
	}
	return len(versions), repeated, lost
}

// successes reads the Successes of p, a storescu -d, failing the test on a
// log that does not parse.
func successes(t *testing.T, p *process) []string {
	t.Helper()
	ok, err := storeSCUSuccesses(p.stderr.String())
	if err != nil {
		t.Fatalf("%v\n%s", err, p.stderr.String())
	}
	return ok
}

// storeSCUSuccesses reads the log of `storescu -d` and returns the SOP
// Instance UIDs of the C-STORE requests that got a Success response. The
// log has a block per DIMSE message:
//
//	D: ===================== OUTGOING DIMSE MESSAGE ====================
//	D: Message Type                  : C-STORE RQ
//	D: Message ID                    : 3
//	D: Affected SOP Instance UID     : 1.2.3
//	D: ======================= END DIMSE MESSAGE =======================
//	D: ===================== INCOMING DIMSE MESSAGE ====================
//	D: Message Type                  : C-STORE RSP
//	D: Message ID Being Responded To : 3
//	D: Affected SOP Instance UID     : 1.2.3
//	D: DIMSE Status                  : 0x0000: Success
//	D: ======================= END DIMSE MESSAGE =======================
//
// A response is matched to its request by message ID, and its UID, if it
// carries one, must be the request's. Only complete blocks count: a log cut
// short never yields a Success.
func storeSCUSuccesses(log string) ([]string, error) {
	requests := map[string]string{} // message ID -> SOP Instance UID
	var ok []string
	var block map[string]string
	for _, line := range strings.Split(log, "\n") {
		line = strings.TrimPrefix(strings.TrimSpace(line), "D: ")
		switch {
		case strings.Contains(line, "OUTGOING DIMSE MESSAGE") || strings.Contains(line, "INCOMING DIMSE MESSAGE"):
			block = map[string]string{}
		case strings.Contains(line, "END DIMSE MESSAGE") && block != nil:
			switch block["Message Type"] {
			case "C-STORE RQ":
				requests[block["Message ID"]] = block["Affected SOP Instance UID"]
			case "C-STORE RSP":
				id := block["Message ID Being Responded To"]
				sop, sent := requests[id]
				if !sent {
					return nil, fmt.Errorf("storescu log: a response to message %q, which was not sent", id)
				}
				if got := block["Affected SOP Instance UID"]; got != "" && got != sop {
					return nil, fmt.Errorf("storescu log: the response to message %s names %s, the request %s", id, got, sop)
				}
				if strings.HasPrefix(block["DIMSE Status"], "0x0000") {
					ok = append(ok, sop)
				}
			}
			block = nil
		case block != nil:
			if k, v, found := strings.Cut(line, ": "); found {
				block[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
	}
	return ok, nil
}

// connectJS connects to the pipeline's NATS server; the connection is
// closed at the end of the test.
func connectJS(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name("pacsflow-test"))
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// readEvents returns every event in the stream PACSFLOW, in order.
func readEvents(t *testing.T, js jetstream.JetStream) []*events.Received {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	st, err := js.Stream(ctx, "PACSFLOW")
	if err != nil {
		t.Fatalf("stream PACSFLOW: %v", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*events.Received
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("event %d: %v", seq, err)
		}
		r, err := events.Decode(m.Subject, m.Header, m.Data)
		if err != nil {
			t.Fatalf("event %d: %v", seq, err)
		}
		out = append(out, r)
	}
	return out
}

// waitEvents reads the stream until cond holds for its events.
func waitEvents(t *testing.T, js jetstream.JetStream, what string, cond func([]*events.Received) bool) []*events.Received {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for {
		evs := readEvents(t, js)
		if cond(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; %d events in the stream", eventTimeout, what, len(evs))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitFor polls cond until it holds, for up to eventTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", eventTimeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ofType(evs []*events.Received, typ string) []*events.Received {
	var out []*events.Received
	for _, e := range evs {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

func countType(typ string, n int) func([]*events.Received) bool {
	return func(evs []*events.Received) bool { return len(ofType(evs, typ)) >= n }
}

// decodeData decodes an event's data into v.
func decodeData[T any](t *testing.T, e *events.Received) *T {
	t.Helper()
	var v T
	if err := json.Unmarshal(e.Data, &v); err != nil {
		t.Fatalf("event %s data: %v", e.ID, err)
	}
	return &v
}

// openStore opens the storage of `pacsflow up --data DATA --storage
// BACKEND` from the outside. fsstore.New clears the store's temporary
// folder, so the fs store is opened only while pacsflow is idle or gone.
func openStore(t *testing.T, backend, data string, js jetstream.JetStream) storage.Store {
	t.Helper()
	switch backend {
	case "fs":
		s, err := fsstore.New(fsstore.Config{Root: filepath.Join(data, "instances")})
		if err != nil {
			t.Fatal(err)
		}
		return s
	case "objectstore":
		ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
		defer cancel()
		s, err := objstore.New(ctx, js, objstore.Config{Bucket: "pacsflow-instances"})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	t.Fatalf("unknown backend %q", backend)
	return nil
}

// readStored reads an object, checks it against the digest and size of its
// event, and returns its file meta information and data set.
func readStored(s storage.Store, obj events.StoredObject) (part10.Meta, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	rc, _, err := s.Open(ctx, obj.Key)
	if err != nil {
		return part10.Meta{}, nil, err
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return part10.Meta{}, nil, fmt.Errorf("read %s: %w", obj.Key, err)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != obj.SHA256 || int64(len(b)) != obj.Size {
		return part10.Meta{}, nil, fmt.Errorf("object %s: %d bytes with SHA-256 %s; its event says %d bytes, %s", obj.Key, len(b), got, obj.Size, obj.SHA256)
	}
	r, err := part10.NewReader(bytes.NewReader(b))
	if err != nil {
		return part10.Meta{}, nil, fmt.Errorf("object %s: %w", obj.Key, err)
	}
	ds, err := io.ReadAll(r)
	if err != nil {
		return part10.Meta{}, nil, fmt.Errorf("object %s: %w", obj.Key, err)
	}
	return r.Meta, ds, nil
}

// httpGet returns the status and body of a GET.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: eventTimeout}
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return res.StatusCode, string(b)
}
