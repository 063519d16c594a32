// Command notify benchmarks the notify service (services/notify) in one
// process: an embedded NATS JetStream server in a temporary folder, the
// service with its page and JSON API on a loopback HTTP server, and Debian's
// chromium, headless and driven by chromedp, showing the worklist page.
// bench/notify.sh builds and runs it.
//
// Every study names the same small DICOM instance, kept in memory: the
// service reads the start of one instance per series to keep synthetic
// studies off the worklist, and storage is not what is measured here.
// Measurements, in this order:
//
//	page         --studies studies, one at a time, into a small worklist.
//	             Each study's pacs.study.received is published and its row
//	             awaited on the page (pending). Then its ai.findings,
//	             ai.report.draft and ai.triage (STAT, URGENT, ROUTINE in
//	             turn) are published one after another, as the understand
//	             service publishes them. The latency runs from just before
//	             the triage's Publish call to window.pacsflowSeen[uid]: the
//	             Date.now() at which the page's app.js first rendered the
//	             study's row with pending false (target: p95 ≤ 500 ms).
//	             Beside it, from the same start to this process's core NATS
//	             subscription receiving the study's worklist.updated.triaged:
//	             the part spent in NATS, JetStream and the worklist bucket.
//	fill         the worklist filled to --entries studies: study events
//	             published asynchronously, a quarter of the studies followed
//	             by the model's three results, so that levels and pending
//	             entries mix; the rate is reported as a by-product.
//	list         --requests sequential GET /api/v1/worklist from a Go client
//	             after 20 warm-up requests, for the default page (200
//	             entries), limit=1000, a filter (level=STAT&q=tanaka) and the
//	             page's own query (target: p95 ≤ 50 ms each).
//	page loaded  --loaded-studies studies as in page, in a page opened anew
//	             on the full worklist (it fetches up to 5000 open entries).
//
// Both clocks are this machine's system clock: Date.now() in chromium,
// time.Now() here. pacsflowSeen is set when the row is put into the DOM,
// before the browser lays it out and paints it.
//
// Output: human-readable lines and one line per measurement
//
//	RESULT test=... key=value ...
//
// on stdout, progress on stderr. It exits 1 when chromium is missing, or a
// study or the fill is late beyond --timeout; missing a target is reported,
// not a failure.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/performance"
	"github.com/chromedp/cdproto/profiler"
	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/bench/internal/benchkit"
	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/triage"
	"github.com/pacsflow/pacsflow/pkg/uid"
	"github.com/pacsflow/pacsflow/services/notify"
)

// crImageStorage is the SOP class of the instance: Computed Radiography
// Image Storage.
const crImageStorage = "1.2.840.10008.5.1.4.1.1.1"

// Targets the figures are compared against (the notify issue's).
const (
	targetPageP95Millis = 500.0
	targetListP95Millis = 50.0
)

const (
	// warmupStudies go through the page before each page measurement and
	// are not counted: the first ones after a page load pay for its code
	// being compiled, which a page open all day does not.
	warmupStudies = 2
	// listWarmup requests precede each timed list series, for the same
	// reason on the server side (and the client's connection).
	listWarmup = 20
	// pollEvery is how often the page is asked whether a study is shown.
	// It bounds only how soon the benchmark notices: the time measured is
	// the one app.js recorded.
	pollEvery = 5 * time.Millisecond
	// filterText is the q of the filtered list: one patient in eleven is
	// named TANAKA (see families).
	filterText = "tanaka"
)

type options struct {
	studies, loadedStudies int
	entries, requests      int
	work, chromium         string
	jsProfile, cpuProfile  string
	keep, verbose          bool
	timeout                time.Duration
}

func parseOptions(args []string) (*options, error) {
	fs := flag.NewFlagSet("notify", flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprint(w, `usage: notify [flags]    (bench/notify.sh builds and runs it)

Benchmarks the notify service in one process: an embedded NATS JetStream server in a
temporary folder, the service's page and API on 127.0.0.1, and headless chromium (chromedp)
showing the page. Measures, in this order:
  page    ai.triage published → the study's row rendered un-pending on the page, one study
          at a time on a small worklist (target p95 ≤ 500 ms), and → worklist.updated.triaged
          received over NATS
  fill    the worklist filled to --entries studies; events/s
  list    sequential GET /api/v1/worklist: default page, limit=1000, a filter, the page's own
          query (target p95 ≤ 50 ms each)
  page    again, on a page opened on the full worklist (--loaded-studies)
Prints RESULT lines (key=value) on stdout, progress on stderr.

flags:
`)
		fs.PrintDefaults()
	}
	o := &options{}
	fs.IntVar(&o.studies, "studies", 50, "studies of the page measurement on the small worklist")
	fs.IntVar(&o.loadedStudies, "loaded-studies", -1, "studies of the page measurement on the full worklist (-1: --studies/5, at least 1; 0: skip it)")
	fs.IntVar(&o.entries, "entries", 10000, "worklist entries for the list measurement")
	fs.IntVar(&o.requests, "requests", 300, "timed requests of each list measurement")
	fs.StringVar(&o.chromium, "chromium", "chromium", "the browser to drive")
	fs.StringVar(&o.jsProfile, "js-profile", "", "profile the page's JavaScript during the page latency on the full worklist: write the profile to this file (.cpuprofile, DevTools opens it) and print where the time went")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a Go CPU profile of the list measurement (the service's handler and the client) to this file")
	fs.StringVar(&o.work, "work", "", "folder for the NATS store, kept (default: a new temporary folder, removed at the end unless --keep)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary work folder")
	fs.BoolVar(&o.verbose, "verbose", false, "log the service's info lines and each study's latencies")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "longest wait for one step: a study on the page, the fill, a request")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.loadedStudies < 0 {
		o.loadedStudies = max(1, o.studies/5)
	}
	if o.studies < 1 || o.entries < 1 || o.requests < 1 || o.timeout <= 0 {
		return nil, errors.New("--studies, --entries, --requests and --timeout must be positive")
	}
	return o, nil
}

func main() { benchkit.Main("notify", parseOptions, run) }

// bench is what the measurements share.
type bench struct {
	o    *options
	nats *benchkit.NATS
	pub  *events.Publisher
	reg  *prometheus.Registry
	base string // the service's URL, http://127.0.0.1:PORT
	page context.Context
	http *http.Client
	arr  *arrivals
	// instance is the DICOM instance every study names, and its key.
	instance      []byte
	instanceKey   string
	instanceSHA   string
	next          int            // studies made so far: numbers the next one
	published     int            // events published: each one changes an entry
	levels        map[string]int // the level each listed study ends at, counted
	worklistTotal int            // studies listed so far
}

// memStore keeps the one instance in memory.
type memStore struct {
	key  string
	data []byte
}

func (m memStore) Open(_ context.Context, key string) (io.ReadCloser, storage.Object, error) {
	if key != m.key {
		return nil, storage.Object{}, fmt.Errorf("open %s: %w", key, storage.ErrNotFound)
	}
	return io.NopCloser(bytes.NewReader(m.data)), storage.Object{Key: key, Size: int64(len(m.data))}, nil
}

func run(ctx context.Context, o *options) (err error) {
	// Before anything starts: without the browser there is no page
	// measurement, the first and main one.
	chromium, err := exec.LookPath(o.chromium)
	if err != nil {
		return fmt.Errorf("chromium is missing (%v): install Debian's (apt-get install chromium; bench/notify.sh does), or name it with --chromium", err)
	}
	log := benchkit.Logger(o.verbose)
	work, done, err := benchkit.WorkFolder(o.work, o.keep, "pacsflow-bench-notify-")
	if err != nil {
		return err
	}
	defer done(&err)
	load0 := benchkit.PrintMachine()

	b := &bench{o: o, reg: prometheus.NewRegistry(), levels: map[string]int{}, http: &http.Client{Timeout: o.timeout}}
	if b.nats, err = benchkit.StartNATS(ctx, filepath.Join(work, "nats"), "pacsflow-bench-notify"); err != nil {
		return err
	}
	defer b.nats.Close()
	if _, err := events.Provision(ctx, b.nats.JS, events.StreamConfig{}); err != nil {
		return fmt.Errorf("provision the streams: %w", err)
	}
	b.pub = events.NewPublisher(b.nats.JS, "pacsflow/bench")
	b.makeInstance()
	if err := b.checkEvents(); err != nil {
		return err
	}

	stopService, err := b.startService(ctx, log)
	if err != nil {
		return err
	}
	defer func() {
		if serr := stopService(); serr != nil && err == nil {
			err = serr
		}
	}()
	if b.arr, err = watchTriaged(b.nats.Conn); err != nil {
		return err
	}
	defer b.arr.close()

	page, closeBrowser, product, err := openBrowser(ctx, chromium)
	if err != nil {
		return err
	}
	defer closeBrowser()
	b.page = page
	fmt.Printf("browser: %s (%s), headless; service at %s\n", product, chromium, b.base)
	fmt.Printf("RESULT test=setup cpus=%d gomaxprocs=%d load_start=%s studies=%d loaded_studies=%d entries=%d requests=%d browser=%s\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), strings.ReplaceAll(load0, " ", ","), o.studies, o.loadedStudies, o.entries, o.requests,
		strings.ReplaceAll(product, " ", "_"))

	if _, err := b.openPage(); err != nil {
		return err
	}
	if err := b.pageLatency(ctx, "small", o.studies); err != nil {
		return err
	}
	// The page leaves while the worklist fills: a browser rendering
	// thousands of live changes would take CPU from the fill on a small
	// machine, and the loaded page is opened afresh below, as a reader
	// would open it on a full worklist.
	if err := chromedp.Do(b.page, chromedp.Navigate("about:blank")); err != nil {
		return fmt.Errorf("leave the page: %w", err)
	}
	if err := b.fill(ctx); err != nil {
		return err
	}
	if err := benchkit.Profiled(b.o.cpuProfile, b.listLatency)(ctx); err != nil {
		return err
	}
	if o.loadedStudies > 0 {
		took, err := b.openPage()
		if err != nil {
			return err
		}
		rows, err := chromedp.Run(b.page, chromedp.Evaluate[int](`document.querySelectorAll('#worklist tr').length`))
		if err != nil {
			return fmt.Errorf("count the rows: %w", err)
		}
		fmt.Printf("\npage opened on %d entries: ready in %.0f ms, %d rows\n", b.worklistTotal, benchkit.Ms(took), rows)
		fmt.Printf("RESULT test=page_load worklist=%d rows=%d ms=%.0f\n", b.worklistTotal, rows, benchkit.Ms(took))
		var stopProfile func() error
		if o.jsProfile != "" {
			if stopProfile, err = b.startJSProfile(o.jsProfile); err != nil {
				return err
			}
		}
		if err := b.pageLatency(ctx, "loaded", o.loadedStudies); err != nil {
			return err
		}
		if stopProfile != nil {
			if err := stopProfile(); err != nil {
				return err
			}
		}
	}
	benchkit.PrintEnd()
	return nil
}

// makeInstance makes the DICOM instance every study names: a 64×64 CR
// image, not synthetic.
func (b *bench) makeInstance() {
	u := uid.New()
	in := dicomtest.Instance{
		SOPClassUID: crImageStorage, SOPInstanceUID: u + ".1.1", StudyInstanceUID: u, SeriesInstanceUID: u + ".1",
		Modality: "CR", PatientID: "BENCH", PatientName: "BENCH^INSTANCE", SeriesNumber: 1, InstanceNumber: 1,
		Image: &dicomtest.Image{Rows: 64, Cols: 64, BitsStored: 12, Photometric: "MONOCHROME2", Values: make([]uint16, 64*64)},
	}
	for i := range in.Image.Values {
		in.Image.Values[i] = uint16(i % 4096)
	}
	b.instance = in.Part10()
	b.instanceKey = u + "/" + u + ".1/" + u + ".1.1.v1"
	sum := sha256.Sum256(b.instance)
	b.instanceSHA = hex.EncodeToString(sum[:])
}

// startService runs the notify service and serves its routes on a loopback
// port; stop ends both.
func (b *bench) startService(ctx context.Context, log *slog.Logger) (stop func() error, err error) {
	svc, err := notify.New(ctx, b.nats.JS, notify.Config{
		Objects: memStore{key: b.instanceKey, data: b.instance}, Logger: log, Registerer: b.reg, Source: "pacsflow/bench-notify",
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	mux := http.NewServeMux()
	svc.Routes(mux)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }() // ends with Close
	b.base = "http://" + ln.Addr().String()
	runCtx, cancel := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- svc.Run(runCtx) }()
	stop = func() error {
		// Close, not Shutdown: a page's live stream would hold a graceful
		// shutdown until the service ends.
		_ = hs.Close()
		cancel()
		if err := <-ran; err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("notify service: %w", err)
		}
		return nil
	}
	deadline := time.Now().Add(b.o.timeout)
	for svc.Ready(ctx) != nil {
		select {
		case err := <-ran:
			cancel()
			_ = hs.Close()
			return nil, fmt.Errorf("notify service ended before it was ready: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = stop()
			return nil, errors.New("notify service: the worklist did not load")
		}
	}
	return stop, nil
}

// openBrowser starts headless chromium and returns its page's context, a
// function that stops it, and its product name and version.
func openBrowser(ctx context.Context, path string) (page context.Context, closeBrowser func(), product string, err error) {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1400, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	page, cancel := chromedp.NewContext(actx)
	closeBrowser = func() { cancel(); cancelAlloc() }
	if err := chromedp.Do(page, chromedp.Navigate("about:blank")); err != nil {
		closeBrowser()
		return nil, nil, "", fmt.Errorf("start chromium: %w", err)
	}
	v, err := chromedp.CallBrowser(page, browser.GetVersion, cdp.Empty{})
	if err != nil {
		closeBrowser()
		return nil, nil, "", fmt.Errorf("chromium: %w", err)
	}
	return page, closeBrowser, v.Product, nil
}

// openPage loads the worklist page and waits until it has rendered the
// list; it returns how long that took.
func (b *bench) openPage() (time.Duration, error) {
	start := time.Now()
	err := chromedp.Do(b.page,
		chromedp.Navigate(b.base+"/"),
		wait(chromedp.Poll[bool](`window.pacsflowReady === true`, chromedp.WithPollingInterval(pollEvery), chromedp.WithPollingTimeout(b.o.timeout))))
	if err != nil {
		return 0, fmt.Errorf("open the worklist page: %w%s", err, b.pageState())
	}
	return time.Since(start), nil
}

// wait makes a poll whose value does not matter a step of chromedp.Do.
func wait[T any](a chromedp.Action[T]) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := a(ctx, t)
		return err
	})
}

// pageState describes the page for an error: its connection state and the
// error it shows, if any.
func (b *bench) pageState() string {
	ctx, cancel := context.WithTimeout(b.page, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](
		`'live stream ' + document.getElementById('conn').textContent + '; ' + (document.getElementById('load-error').textContent || 'no error shown')`))
	if err != nil {
		return ""
	}
	return " (page: " + s + ")"
}

// arrivals records when this process receives each study's
// worklist.updated.triaged, by Study Instance UID (the events' ce-subject).
type arrivals struct {
	sub  *nats.Subscription
	mu   sync.Mutex
	at   map[string]time.Time
	wait map[string]chan struct{}
}

func watchTriaged(nc *nats.Conn) (*arrivals, error) {
	a := &arrivals{at: map[string]time.Time{}, wait: map[string]chan struct{}{}}
	var err error
	a.sub, err = nc.Subscribe(events.SubjectWorklistUpdated+"."+events.WorklistTriaged+".>", func(m *nats.Msg) {
		now := time.Now()
		u := m.Header.Get(events.HeaderSubject)
		a.mu.Lock()
		defer a.mu.Unlock()
		// A map, not a channel: the fill announces thousands, which
		// nothing reads and nothing may hold up.
		if _, seen := a.at[u]; !seen {
			a.at[u] = now
		}
		if ch, ok := a.wait[u]; ok {
			close(ch)
			delete(a.wait, u)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to worklist.updated: %w", err)
	}
	if err := nc.Flush(); err != nil {
		return nil, fmt.Errorf("subscribe to worklist.updated: %w", err)
	}
	return a, nil
}

// expect returns a channel closed once study u's arrival is recorded; call
// it before publishing what causes it.
func (a *arrivals) expect(u string) <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch := make(chan struct{})
	if _, seen := a.at[u]; seen {
		close(ch)
	} else {
		a.wait[u] = ch
	}
	return ch
}

func (a *arrivals) get(u string) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.at[u]
}

func (a *arrivals) close() { _ = a.sub.Unsubscribe() }

// ---- studies and their events ------------------------------------------------------------

// families are the patients' family names, taken in turn: one in eleven is
// TANAKA, what the filtered list searches for. Eleven, a prime, so that
// every name meets every level: the levels go by study number modulo 3, 4
// and 20.
var families = []string{"SMITH", "MUELLER", "GARCIA", "ROSSI", "DUBOIS", "TANAKA", "NOVAK", "SILVA", "KOWALSKI", "JONES", "OKAFOR"}

var levels = []string{events.TriageStat, events.TriageUrgent, events.TriageRoutine}

var benchModel = events.ModelRef{Name: "bench", Version: "1", ContractVersion: "1", IntendedUse: "benchmark only, not for clinical use"}

// study is a study of one CR instance (the shared one).
type study struct {
	n    int
	uid  string
	data *events.StudyReceived
}

// newStudy makes the next study; priority is its Requested Procedure
// Priority, the level of its entry while pending.
func (b *bench) newStudy(priority string) *study {
	n := b.next
	b.next++
	u := uid.New()
	now := time.Now().UTC()
	se := events.SeriesManifest{
		SeriesInstanceUID: u + ".1", SeriesNumber: 1, Modality: "CR", Description: "CHEST PA", NumInstances: 1, Bytes: int64(len(b.instance)),
		Instances: []events.InstanceRef{{
			SOPInstanceUID: u + ".1.1", SOPClassUID: crImageStorage, InstanceNumber: 1,
			TransferSyntaxUID: uid.ExplicitVRLittleEndian, ReceivedAt: now,
			Object: events.StoredObject{Backend: events.BackendFS, Key: b.instanceKey, Size: int64(len(b.instance)), SHA256: b.instanceSHA},
		}},
	}
	return &study{n: n, uid: u, data: &events.StudyReceived{
		Patient: events.Patient{ID: fmt.Sprintf("BP%07d", n), Name: fmt.Sprintf("%s^PATIENT %d", families[n%len(families)], n), BirthDate: "19600101", Sex: "O"},
		Study: events.Study{StudyInstanceUID: u, AccessionNumber: fmt.Sprintf("BA%07d", n), Description: "XR CHEST 1 VIEW",
			Date: now.Format("20060102"), Time: now.Format("150405"), RequestedProcedurePriority: priority},
		Modalities: []string{"CR"}, Series: []events.SeriesManifest{se}, NumSeries: 1, NumInstances: 1, Bytes: se.Bytes,
		CallingAEs: []string{"BENCH"}, CalledAEs: []string{benchkit.CalledAE}, Associations: []string{"bench-" + strconv.Itoa(n)},
		FirstReceivedAt: now, LastReceivedAt: now, Trigger: events.TriggerQuietPeriod, Generation: 1,
	}}
}

func (s *study) received() *events.Event {
	return &events.Event{ID: "study/" + s.uid + "/1", Type: events.TypeStudyReceived, Source: "pacsflow/bench", Subject: s.uid,
		NATSSubject: events.StudySubject(events.SubjectStudyReceived, s.data.Modalities, benchkit.CalledAE), Data: s.data}
}

// results are the model's three events for the study, as the understand
// service publishes them: ai.findings, ai.report.draft, then ai.triage at
// level.
func (s *study) results(level string) []*events.Event {
	score := 0.05 + 0.9*float64(s.n%97)/97
	sop := s.data.Series[0].Instances[0].SOPInstanceUID
	findings := []events.Finding{
		{Label: "nodule", Probability: score, Present: score >= 0.5, Box: []float64{0.21, 0.18, 0.39, 0.33}, SOPInstanceUID: sop, Frame: 1},
		{Label: "effusion", Probability: 0.12, Box: []float64{0.6, 0.05, 0.95, 0.45}, SOPInstanceUID: sop, Frame: 1},
		{Label: "pneumothorax", Probability: 0.03, Box: []float64{0.05, 0.55, 0.5, 0.95}, SOPInstanceUID: sop, Frame: 1},
	}
	st := events.Study{StudyInstanceUID: s.uid, AccessionNumber: s.data.Study.AccessionNumber, RequestedProcedurePriority: s.data.Study.RequestedProcedurePriority}
	mods, first := s.data.Modalities, s.data.FirstReceivedAt
	ev := func(typ, subject string, data any) *events.Event {
		return &events.Event{ID: typ + "/" + s.uid + "/1", Type: typ, Source: "pacsflow/bench", Subject: s.uid, NATSSubject: subject, Data: data}
	}
	return []*events.Event{
		ev(events.TypeAIFindings, events.StudySubject(events.SubjectAIFindings, mods, benchkit.CalledAE), &events.AIFindings{
			Study: st, Generation: 1, Modalities: mods, FirstReceivedAt: first, Model: benchModel, Findings: findings, NumImages: 1,
			Skipped: []events.SkippedInstance{}, Timings: events.AITimings{Wait: 0.01, Decode: 0.02, Inference: 0.05, Total: 0.08}, AnalyzedAt: time.Now().UTC()}),
		ev(events.TypeAIReportDraft, events.StudySubject(events.SubjectAIReportDraft, mods, benchkit.CalledAE), &events.AIReportDraft{
			Study: st, Generation: 1, Modalities: mods, FirstReceivedAt: first, Model: benchModel, MachineGenerated: true, SOPInstanceUID: sop, Frame: 1,
			Findings: findings, Text: "FINDINGS: Single frontal view of the chest. A rounded opacity projects over the right upper zone, " +
				"about 2 cm. No pleural effusion. No pneumothorax. Heart size within normal limits. IMPRESSION: Right upper zone " +
				"nodular opacity; CT chest suggested. Machine-generated draft, not reviewed by a radiologist."}),
		ev(events.TypeAITriage, events.AITriageSubject(level, mods, benchkit.CalledAE), &events.AITriage{
			Study: st, Generation: 1, Modalities: mods, FirstReceivedAt: first, Model: benchModel, Level: level, Score: score,
			Reason: fmt.Sprintf("nodule %.2f", score)}),
	}
}

// checkEvents checks one study's four events against the event contract:
// otherwise the benchmark would measure rejections.
func (b *bench) checkEvents() error {
	s := b.newStudy("")
	b.next-- // a check, not a study: its number is used again
	for _, e := range append([]*events.Event{s.received()}, s.results(events.TriageStat)...) {
		e.Time = time.Now()
		m, err := e.Message()
		if err == nil {
			err = events.ValidateMessage(m.Subject, m.Header, m.Data)
		}
		if err != nil {
			return fmt.Errorf("the benchmark's %s event: %w", e.Type, err)
		}
	}
	return nil
}

// listed counts a study at the level its entry ends at.
func (b *bench) listed(s *study, triagedAs string) {
	level := triagedAs
	if level == "" {
		level = triage.PriorityLevel(s.data.Study.RequestedProcedurePriority).String()
	}
	b.levels[level]++
	b.worklistTotal++
}

// ---- page latency -------------------------------------------------------------------------

// pageLatency publishes n studies (after the warm-up ones) one at a time
// and measures when the page shows each one's triage.
func (b *bench) pageLatency(ctx context.Context, name string, n int) error {
	fmt.Printf("\n== page latency (%s worklist, %d entries before): %d studies one at a time, after %d warm-up ones\n",
		name, b.worklistTotal, n, warmupStudies)
	var page, natsMs, ack, browserMs []float64
	if _, err := chromedp.Call(b.page, performance.Enable, performance.EnableParams{}); err != nil {
		return fmt.Errorf("page metrics: %w", err)
	}
	m0, err := b.pageMetrics()
	if err != nil {
		return err
	}
	start, before := time.Now(), b.worklistTotal
	for i := range warmupStudies + n {
		level := levels[b.next%len(levels)]
		s := b.newStudy("")
		p, nm, a, err := b.oneStudy(ctx, s, level)
		if err != nil {
			return err
		}
		b.listed(s, level)
		if b.o.verbose {
			warm := ""
			if i < warmupStudies {
				warm = " (warm-up)"
			}
			benchkit.Progress("page %s %d/%d%s: %s shown %.0f ms after its triage was published; worklist.updated.triaged %.1f ms; publish %.1f ms",
				name, i+1, warmupStudies+n, warm, level, p, nm, a)
		}
		if i < warmupStudies {
			continue
		}
		page, natsMs, ack, browserMs = append(page, p), append(natsMs, nm), append(ack, a), append(browserMs, p-nm)
		if (i+1-warmupStudies)%10 == 0 {
			benchkit.Progress("page %s: %d/%d studies, p95 so far %.0f ms", name, i+1-warmupStudies, n, benchkit.Pct(page, 95))
		}
	}
	wall := time.Since(start)
	m1, err := b.pageMetrics()
	if err != nil {
		return err
	}
	// What the page's main thread did, per study (warm-up ones included:
	// the metrics cover the whole run): all its tasks, and in them its
	// JavaScript, style recalculation and layout.
	per := func(k string) float64 { return 1000 * (m1[k] - m0[k]) / float64(warmupStudies+n) }
	busy := (m1["TaskDuration"] - m0["TaskDuration"]) / wall.Seconds()
	met := benchkit.Pct(page, 95) <= targetPageP95Millis
	fmt.Printf("ai.triage published → row shown un-pending: p50 %.0f ms, p95 %.0f ms, p99 %.0f ms, max %.0f ms, min %.0f ms (target p95 ≤ %.0f ms: %s)\n",
		benchkit.Pct(page, 50), benchkit.Pct(page, 95), benchkit.Pct(page, 99), benchkit.Pct(page, 100), benchkit.Pct(page, 0), targetPageP95Millis, verdict(met))
	fmt.Printf("ai.triage published → worklist.updated.triaged received: p50 %.1f ms, p95 %.1f ms, p99 %.1f ms, max %.1f ms\n",
		benchkit.Pct(natsMs, 50), benchkit.Pct(natsMs, 95), benchkit.Pct(natsMs, 99), benchkit.Pct(natsMs, 100))
	fmt.Printf("the rest (page − worklist.updated, per study): p50 %.1f ms, p95 %.1f ms, max %.1f ms; the Publish call itself: p50 %.1f ms, p95 %.1f ms\n",
		benchkit.Pct(browserMs, 50), benchkit.Pct(browserMs, 95), benchkit.Pct(browserMs, 100), benchkit.Pct(ack, 50), benchkit.Pct(ack, 95))
	fmt.Printf("%d studies in %.1f s; the page's main thread busy %.0f %% of it, per study %.0f ms: JavaScript %.0f ms, style %.0f ms (%.1f recalculations), layout %.0f ms (%.1f layouts)\n",
		warmupStudies+n, wall.Seconds(), 100*busy, per("TaskDuration"), per("ScriptDuration"), per("RecalcStyleDuration"),
		(m1["RecalcStyleCount"]-m0["RecalcStyleCount"])/float64(warmupStudies+n), per("LayoutDuration"),
		(m1["LayoutCount"]-m0["LayoutCount"])/float64(warmupStudies+n))
	fmt.Printf("RESULT test=page phase=%s worklist=%d worklist_end=%d studies=%d p50_ms=%.1f p95_ms=%.1f p99_ms=%.1f max_ms=%.1f min_ms=%.1f "+
		"nats_p50_ms=%.1f nats_p95_ms=%.1f nats_p99_ms=%.1f nats_max_ms=%.1f rest_p50_ms=%.1f rest_p95_ms=%.1f publish_p50_ms=%.1f publish_p95_ms=%.1f "+
		"main_busy=%.2f task_ms_per_study=%.1f script_ms_per_study=%.1f style_ms_per_study=%.1f layout_ms_per_study=%.1f layouts_per_study=%.1f target_p95_ms=%g met=%t\n",
		name, before, b.worklistTotal, n, benchkit.Pct(page, 50), benchkit.Pct(page, 95), benchkit.Pct(page, 99), benchkit.Pct(page, 100), benchkit.Pct(page, 0),
		benchkit.Pct(natsMs, 50), benchkit.Pct(natsMs, 95), benchkit.Pct(natsMs, 99), benchkit.Pct(natsMs, 100), benchkit.Pct(browserMs, 50), benchkit.Pct(browserMs, 95),
		benchkit.Pct(ack, 50), benchkit.Pct(ack, 95), busy, per("TaskDuration"), per("ScriptDuration"), per("RecalcStyleDuration"), per("LayoutDuration"),
		(m1["LayoutCount"]-m0["LayoutCount"])/float64(warmupStudies+n), targetPageP95Millis, met)
	return nil
}

// pageMetrics reads the page's run-time metrics (Performance.getMetrics):
// counts, and durations in seconds, each since the page loaded.
func (b *bench) pageMetrics() (map[string]float64, error) {
	res, err := chromedp.Call(b.page, performance.GetMetrics, cdp.Empty{})
	if err != nil {
		return nil, fmt.Errorf("page metrics: %w", err)
	}
	m := map[string]float64{}
	for _, x := range res.Metrics {
		m[x.Name] = x.Value
	}
	return m, nil
}

// oneStudy lists a study, waits until the page shows it pending, then
// publishes its results. It returns, in ms from just before the triage's
// Publish call: when the page showed the triage, when this process
// received worklist.updated.triaged, and when Publish returned.
func (b *bench) oneStudy(ctx context.Context, s *study, level string) (page, natsMs, ack float64, err error) {
	if err := b.publish(ctx, s.received()); err != nil {
		return 0, 0, 0, err
	}
	row := strconv.Quote(`#worklist tr[data-study="` + s.uid + `"].pending`)
	if err := chromedp.Do(b.page, wait(chromedp.Poll[bool](`document.querySelector(`+row+`) !== null`,
		chromedp.WithPollingInterval(pollEvery), chromedp.WithPollingTimeout(b.o.timeout)))); err != nil {
		return 0, 0, 0, fmt.Errorf("study %s pending on the page: %w%s", s.uid, err, b.pageState())
	}
	res := s.results(level)
	for _, e := range res[:2] {
		if err := b.publish(ctx, e); err != nil {
			return 0, 0, 0, err
		}
	}
	arrived := b.arr.expect(s.uid)
	t0 := time.Now()
	if err := b.publish(ctx, res[2]); err != nil {
		return 0, 0, 0, err
	}
	ack = benchkit.Ms(time.Since(t0))
	seen, err := chromedp.Run(b.page, chromedp.Poll[float64](`window.pacsflowSeen[`+strconv.Quote(s.uid)+`]`,
		chromedp.WithPollingInterval(pollEvery), chromedp.WithPollingTimeout(b.o.timeout)))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("study %s triaged on the page: %w%s", s.uid, err, b.pageState())
	}
	select {
	case <-arrived:
	case <-time.After(b.o.timeout):
		return 0, 0, 0, fmt.Errorf("study %s: no worklist.updated.triaged within %v", s.uid, b.o.timeout)
	case <-ctx.Done():
		return 0, 0, 0, ctx.Err()
	}
	// Epoch milliseconds on both sides: Date.now() has whole milliseconds.
	page = seen - float64(t0.UnixMicro())/1000
	return page, benchkit.Ms(b.arr.get(s.uid).Sub(t0)), ack, nil
}

func (b *bench) publish(ctx context.Context, e *events.Event) error {
	if _, err := b.pub.Publish(ctx, e); err != nil {
		return err
	}
	b.published++
	return nil
}

// ---- fill --------------------------------------------------------------------------------

// fill publishes study events until the worklist holds --entries studies,
// a quarter of them followed by their results, and waits until the API
// lists them all with their levels.
func (b *bench) fill(ctx context.Context) error {
	need := b.o.entries - b.worklistTotal
	fmt.Printf("\n== fill: %d more studies to %d entries, a quarter with the model's results\n", max(need, 0), b.o.entries)
	if need <= 0 {
		return nil
	}
	var studies, triaged []*study
	for i := range need {
		// While pending, an entry's level is its DICOM priority: a few
		// STAT and HIGH ones, so that pending entries are not all ROUTINE.
		priority := ""
		switch i % 20 {
		case 0:
			priority = "STAT"
		case 5, 15:
			priority = "HIGH"
		}
		s := b.newStudy(priority)
		studies = append(studies, s)
		if i%4 == 0 {
			triaged = append(triaged, s)
		}
	}
	var msgs []*nats.Msg
	add := func(e *events.Event) error {
		e.Time = time.Now()
		m, err := e.Message()
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
		return nil
	}
	for _, s := range studies {
		if err := add(s.received()); err != nil {
			return err
		}
	}
	// The results after every study event, as they come in production:
	// seconds after their study, with other studies arriving meanwhile.
	triagedAs := map[*study]string{}
	for i, s := range triaged {
		level := levels[i%len(levels)]
		triagedAs[s] = level
		for _, e := range s.results(level) {
			if err := add(e); err != nil {
				return err
			}
		}
	}
	for _, s := range studies {
		b.listed(s, triagedAs[s])
	}

	start := time.Now()
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for i, m := range msgs {
		// A long stall wait: the service consumes while this publishes,
		// and on two cores the acknowledgements can lag far behind.
		f, err := b.nats.JS.PublishMsgAsync(m, jetstream.WithStallWait(b.o.timeout))
		if err != nil {
			return fmt.Errorf("fill: publish %d/%d: %w", i+1, len(msgs), err)
		}
		futures = append(futures, f)
	}
	select {
	case <-b.nats.JS.PublishAsyncComplete():
	case <-time.After(b.o.timeout):
		return fmt.Errorf("fill: %d publishes not acknowledged within %v", b.nats.JS.PublishAsyncPending(), b.o.timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("fill: publish %s: %w", f.Msg().Subject, err)
		}
	}
	published := time.Since(start)
	b.published += len(msgs)
	benchkit.Progress("fill: %d events published in %.1f s", len(msgs), published.Seconds())

	// Done when the service has applied every event published so far
	// (each changes an entry once) and its API lists every study at the
	// level it ends at (the view follows the bucket a moment after the
	// writes).
	want := b.published
	deadline := time.Now().Add(b.o.timeout)
	lastNote := time.Now()
	for {
		applied, err := b.applied()
		if err != nil {
			return err
		}
		if applied >= float64(want) {
			total, err := b.total(ctx, "")
			if err != nil {
				return err
			}
			stat, err := b.total(ctx, "&level=STAT")
			if err != nil {
				return err
			}
			if total == b.worklistTotal && stat == b.levels[events.TriageStat] {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fill: the service applied %.0f of %d events within %v", applied, want, b.o.timeout)
		}
		if time.Since(lastNote) >= 5*time.Second {
			benchkit.Progress("fill: %.0f/%d events applied", applied, want)
			lastNote = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	took := time.Since(start)
	rate := float64(len(msgs)) / took.Seconds()
	fmt.Printf("%d events (%d studies, %d with results) listed in %.1f s: %.0f events/s, %.0f studies/s (published in %.1f s); levels %v\n",
		len(msgs), len(studies), len(triaged), took.Seconds(), rate, float64(len(studies))/took.Seconds(), published.Seconds(), b.levels)
	fmt.Printf("RESULT test=fill entries=%d studies=%d triaged=%d events=%d seconds=%.2f events_per_s=%.0f studies_per_s=%.0f publish_s=%.2f\n",
		b.worklistTotal, len(studies), len(triaged), len(msgs), took.Seconds(), rate, float64(len(studies))/took.Seconds(), published.Seconds())
	return nil
}

// applied is how many events the service has applied to the worklist.
func (b *bench) applied() (float64, error) {
	mfs, err := b.reg.Gather()
	if err != nil {
		return 0, fmt.Errorf("metrics: %w", err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "pacsflow_notify_events_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == "applied" {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum, nil
}

// total is the total the list API reports for the query (&level=...).
func (b *bench) total(ctx context.Context, query string) (int, error) {
	p, _, err := b.get(ctx, "/api/v1/worklist?limit=1"+query)
	if err != nil {
		return 0, err
	}
	return p.Total, nil
}

// worklistPage is what the benchmark reads of a list answer.
type worklistPage struct {
	Total   int               `json:"total"`
	Entries []json.RawMessage `json:"entries"`
}

// get reads a list answer; n is its length in bytes.
func (b *bench) get(ctx context.Context, path string) (p worklistPage, n int, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.base+path, nil)
	if err != nil {
		return p, 0, err
	}
	resp, err := b.http.Do(req)
	if err != nil {
		return p, 0, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return p, 0, fmt.Errorf("GET %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return p, 0, fmt.Errorf("GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return p, 0, fmt.Errorf("GET %s: %w", path, err)
	}
	return p, len(body), nil
}

// ---- list latency ------------------------------------------------------------------------

// listCase is one list request measured.
type listCase struct {
	name, query string
	// want is the number of entries the answer must hold; -1: at least one.
	want int
}

func (b *bench) listLatency(ctx context.Context) error {
	open := b.worklistTotal // every entry is new: all open
	cases := []listCase{
		{"default", "", min(200, b.worklistTotal)},
		{"limit1000", "?limit=1000", min(1000, b.worklistTotal)},
		{"filter", "?level=STAT&q=" + filterText, -1},
		{"page_query", "?limit=200&offset=0&status=new%2Cin_review", min(200, open)},
	}
	fmt.Printf("\n== list latency: %d entries, %d sequential requests after %d warm-up ones, over HTTP on loopback from Go\n",
		b.worklistTotal, b.o.requests, listWarmup)
	for _, c := range cases {
		path := "/api/v1/worklist" + c.query
		// The first answer is checked: a fast wrong answer measures nothing.
		p, size, err := b.get(ctx, path)
		if err != nil {
			return err
		}
		if c.want >= 0 && len(p.Entries) != c.want || c.want < 0 && len(p.Entries) == 0 {
			return fmt.Errorf("GET %s: %d entries of %d, want %d", path, len(p.Entries), p.Total, c.want)
		}
		for range listWarmup - 1 {
			if _, err := b.timedGet(ctx, path); err != nil {
				return err
			}
		}
		count0, sum0, err := b.serverTime()
		if err != nil {
			return err
		}
		lat := make([]float64, 0, b.o.requests)
		for range b.o.requests {
			d, err := b.timedGet(ctx, path)
			if err != nil {
				return err
			}
			lat = append(lat, benchkit.Ms(d))
		}
		count1, sum1, err := b.serverTime()
		if err != nil {
			return err
		}
		server := math.NaN()
		if count1 > count0 {
			server = 1000 * (sum1 - sum0) / float64(count1-count0)
		}
		met := benchkit.Pct(lat, 95) <= targetListP95Millis
		fmt.Printf("GET %-52s %4d of %5d entries, %7.0f kB: p50 %5.1f ms, p95 %5.1f ms, p99 %5.1f ms, max %5.1f ms; in the handler %5.1f ms mean (target p95 ≤ %.0f ms: %s)\n",
			path, len(p.Entries), p.Total, float64(size)/1000, benchkit.Pct(lat, 50), benchkit.Pct(lat, 95), benchkit.Pct(lat, 99), benchkit.Pct(lat, 100), server, targetListP95Millis, verdict(met))
		fmt.Printf("RESULT test=list case=%s worklist=%d returned=%d matched=%d bytes=%d requests=%d p50_ms=%.2f p95_ms=%.2f p99_ms=%.2f max_ms=%.2f server_mean_ms=%.2f target_p95_ms=%g met=%t\n",
			c.name, b.worklistTotal, len(p.Entries), p.Total, size, len(lat), benchkit.Pct(lat, 50), benchkit.Pct(lat, 95), benchkit.Pct(lat, 99), benchkit.Pct(lat, 100), server, targetListP95Millis, met)
	}
	return nil
}

// timedGet times one request to its last byte; the client's JSON decoding
// is left out, it is not the service's time.
func (b *bench) timedGet(ctx context.Context, path string) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.base+path, nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	resp, err := b.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", path, err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	d := time.Since(start)
	resp.Body.Close()
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return d, nil
}

// serverTime is the count and sum of the service's own timing of the list
// route: its handler, without the connection and the client.
func (b *bench) serverTime() (count uint64, sum float64, err error) {
	mfs, err := b.reg.Gather()
	if err != nil {
		return 0, 0, fmt.Errorf("metrics: %w", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "pacsflow_notify_http_request_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "route" && l.GetValue() == "/api/v1/worklist" {
					return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum(), nil
				}
			}
		}
	}
	return 0, 0, nil
}

// ---- the page's profile ------------------------------------------------------------------

// startJSProfile starts the page's JavaScript CPU profiler; stop ends it,
// writes the profile to path and prints the functions that took the most
// time. Native work a function causes (a forced layout, DOM changes) counts
// as that function's own time.
func (b *bench) startJSProfile(path string) (stop func() error, err error) {
	if _, err := chromedp.Call(b.page, profiler.Enable, cdp.Empty{}); err != nil {
		return nil, fmt.Errorf("JavaScript profiler: %w", err)
	}
	if _, err := chromedp.Call(b.page, profiler.SetSamplingInterval, profiler.SetSamplingIntervalParams{Interval: 200}); err != nil {
		return nil, fmt.Errorf("JavaScript profiler: %w", err)
	}
	if _, err := chromedp.Call(b.page, profiler.Start, cdp.Empty{}); err != nil {
		return nil, fmt.Errorf("JavaScript profiler: %w", err)
	}
	return func() error {
		res, err := chromedp.Call(b.page, profiler.Stop, cdp.Empty{})
		if err != nil || res.Profile == nil {
			return fmt.Errorf("JavaScript profiler: no profile (%v)", err)
		}
		out, err := json.Marshal(res.Profile)
		if err == nil {
			err = os.WriteFile(path, out, 0o644)
		}
		if err != nil {
			return fmt.Errorf("JavaScript profile: %w", err)
		}
		printProfile(res.Profile, path)
		return nil
	}, nil
}

// printProfile prints the functions with the most time, their own and with
// what they called.
func printProfile(p *profiler.Profile, path string) {
	parent := map[int64]int64{}
	nodes := map[int64]*profiler.ProfileNode{}
	for _, n := range p.Nodes {
		nodes[n.ID] = n
		for _, c := range n.Children {
			parent[c] = n.ID
		}
	}
	name := func(n *profiler.ProfileNode) string {
		f := n.CallFrame
		if f.URL == "" {
			return f.FunctionName
		}
		fn := f.FunctionName
		if fn == "" {
			fn = "(anonymous)"
		}
		return fmt.Sprintf("%s %s:%d", fn, filepath.Base(f.URL), f.LineNumber+1)
	}
	self, total := map[string]float64{}, map[string]float64{}
	all := 0.0
	for i, id := range p.Samples {
		if i+1 >= len(p.TimeDeltas) {
			break
		}
		// The time until the next sample is this sample's.
		ms := float64(p.TimeDeltas[i+1]) / 1000
		all += ms
		self[name(nodes[id])] += ms
		seen := map[string]bool{}
		for n, ok := id, true; ok; n, ok = parent[n] {
			if k := name(nodes[n]); !seen[k] {
				seen[k] = true
				total[k] += ms
			}
		}
	}
	type row struct {
		fn          string
		self, total float64
	}
	var rows []row
	for fn := range total {
		if fn != "(root)" {
			rows = append(rows, row{fn, self[fn], total[fn]})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].total > rows[j].total })
	fmt.Printf("page JavaScript profile (%s), %.0f ms sampled; by time with callees:\n", path, all)
	for _, r := range rows[:min(len(rows), 12)] {
		fmt.Printf("  %8.0f ms %5.1f %%  own %8.0f ms  %s\n", r.total, 100*r.total/all, r.self, r.fn)
	}
}

// ---- figures -----------------------------------------------------------------------------

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "NOT MET"
}
