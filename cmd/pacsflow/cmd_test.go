package main_test

// End-to-end tests of the pacsflow binary: it is built, run as a separate
// process and paired with DCMTK (storescu, storescp, dcmdump, dcmconv),
// which must be in PATH (apt-get install dcmtk, or ./scripts/test.sh).

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/internal/syncbuf"

	"github.com/pacsflow/pacsflow/pkg/uid"
)

// waitTimeout bounds every wait for a process, so that a hung one fails the
// test instead of hanging it.
const waitTimeout = 2 * time.Minute

func requireTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s is not in PATH: install DCMTK (apt-get install dcmtk) or run ./scripts/test.sh", n)
		}
	}
}

// buildPacsflow builds the command under test into a temporary folder.
func buildPacsflow(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pacsflow")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// childEnv is the environment of every child process. PACSFLOW_* variables
// are dropped because pacsflow reads its flags from them; TCP_NODELAY=1
// keeps DCMTK from stalling about 40 ms on every message (Nagle).
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PACSFLOW_") {
			env = append(env, kv)
		}
	}
	return append(env, "TCP_NODELAY=1")
}

type process struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr syncbuf.Buffer // what it wrote, readable while it runs
	done           chan struct{}
	err            error
}

// start starts a process that is killed at the end of the test if it is
// still running.
func start(t *testing.T, name string, args ...string) *process {
	t.Helper()
	p := &process{name: filepath.Base(name), cmd: exec.Command(name, args...), done: make(chan struct{})}
	p.cmd.Env = childEnv()
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill() // fails harmlessly once the process has exited
		<-p.done
	})
	return p
}

// wait waits for the process to exit and returns its exit error.
func (p *process) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(waitTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not exit within %s\nstdout:\n%s\nstderr:\n%s", p.name, waitTimeout, p.stdout.String(), p.stderr.String())
		return nil
	}
}

// mustSucceed waits for the process and fails the test unless it exited 0.
func (p *process) mustSucceed(t *testing.T) {
	t.Helper()
	if err := p.wait(t); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", p.name, strings.Join(p.cmd.Args[1:], " "), err, p.stdout.String(), p.stderr.String())
	}
}

// exitCode is the exit status of an exited process.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

var listeningRE = regexp.MustCompile(`DICOM SCP \S+ listening on (\S+)\n`)

// startStoreSCP runs `pacsflow storescp` on a port of its choosing (the
// address it prints is read back, so no port can be taken in between) and
// returns it once it listens.
func startStoreSCP(t *testing.T, bin string, args ...string) (*process, string) {
	t.Helper()
	p := start(t, bin, append([]string{"storescp", "--addr", "127.0.0.1:0"}, args...)...)
	deadline := time.After(waitTimeout)
	for {
		if m := listeningRE.FindStringSubmatch(p.stdout.String()); m != nil {
			return p, m[1]
		}
		select {
		case <-p.done:
			t.Fatalf("pacsflow storescp exited (%v) before listening\nstdout:\n%s\nstderr:\n%s", p.err, p.stdout.String(), p.stderr.String())
		case <-deadline:
			t.Fatalf("pacsflow storescp did not listen within %s\nstderr:\n%s", waitTimeout, p.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
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

// startDCMTKStoreSCP runs DCMTK's storescp (AE title STORESCP) writing into
// dir and returns its address once it accepts connections. The port is
// picked free and handed over, so another process may take it in between:
// then storescp exits and another port is tried.
func startDCMTKStoreSCP(t *testing.T, dir string, opts ...string) string {
	t.Helper()
	requireTools(t, "storescp")
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		addr := net.JoinHostPort("127.0.0.1", port)
		p := start(t, "storescp", append(append([]string{"-aet", "STORESCP"}, opts...), "-od", dir, port)...)
		if waitListening(t, p, addr) {
			return addr
		}
		if attempt == 5 {
			t.Fatalf("storescp did not start (%v):\n%s%s", p.err, p.stdout.String(), p.stderr.String())
		}
	}
}

// waitListening polls addr until it accepts a connection; false means that
// the process exited first.
func waitListening(t *testing.T, p *process, addr string) bool {
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
			t.Fatalf("%s did not accept connections on %s within %s:\n%s", p.name, addr, waitTimeout, p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sample is a Part 10 file split into its meta information and data set.
type sample = dicomtest.Sample

func readSample(t *testing.T, path string) sample { return dicomtest.ReadSample(t, path) }

func samplePaths(t *testing.T) []string { return dicomtest.SamplePaths(t) }

// copyFile copies src into dir, writable (the module cache is read-only).
func copyFile(t *testing.T, src, dir string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, filepath.Base(src))
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestStoreSCPFromDCMTK: DCMTK's storescu sends to `pacsflow storescp`,
// which writes each instance as <SOPInstanceUID>.dcm holding the data set as
// it came, with a file meta header that dcmdump reads.
func TestStoreSCPFromDCMTK(t *testing.T) {
	requireTools(t, "storescu", "dcmconv", "dcmdump")
	bin := buildPacsflow(t)
	// storescu re-encodes what it sends in DCMTK's canonical encoding
	// (explicit sequence lengths...); files that dcmconv wrote are already
	// in it, so they go out unchanged and can be compared byte for byte.
	src := t.TempDir()
	var plain, deflated []sample
	for _, p := range samplePaths(t) {
		dst := filepath.Join(src, filepath.Base(p))
		if out, err := exec.Command("dcmconv", p, dst).CombinedOutput(); err != nil {
			t.Fatalf("dcmconv %s: %v\n%s", p, err, out)
		}
		s := readSample(t, dst)
		if s.Meta.TransferSyntaxUID == uid.DeflatedExplicitVRLittleEndian {
			deflated = append(deflated, s)
		} else {
			plain = append(plain, s)
		}
	}
	if len(deflated) == 0 || len(plain) == 0 {
		t.Fatal("the samples no longer include deflated and non-deflated files")
	}

	dir := t.TempDir()
	_, addr := startStoreSCP(t, bin, "--dir", dir)
	host, port, _ := net.SplitHostPort(addr)
	// storescu sends each file in its own transfer syntax when a context
	// for it is accepted; it proposes Deflated only with -xd, and then
	// deflates everything, hence two runs.
	for _, run := range []struct {
		opts    []string
		samples []sample
	}{{nil, plain}, {[]string{"-xd"}, deflated}} {
		args := append(append([]string{}, run.opts...), "-aet", "STORESCU", "-aec", "PACSFLOW", host, port)
		for _, s := range run.samples {
			args = append(args, s.Path)
		}
		start(t, "storescu", args...).mustSucceed(t)
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := len(plain) + len(deflated); len(entries) != want {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("%d files in the output folder, want %d: %v", len(entries), want, names)
	}
	for _, s := range append(plain, deflated...) {
		name := filepath.Base(s.Path)
		path := filepath.Join(dir, s.Meta.MediaStorageSOPInstanceUID+".dcm")
		if _, err := os.Stat(path); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		got := readSample(t, path)
		want := s.DataSet
		if s.Meta.TransferSyntaxUID == uid.DeflatedExplicitVRLittleEndian && len(want)%2 == 1 {
			// DCMTK pads an odd deflated stream with a NUL when it sends it.
			want = append(bytes.Clone(want), 0)
		}
		switch {
		case got.Meta.TransferSyntaxUID != s.Meta.TransferSyntaxUID:
			t.Errorf("%s: stored in %s, want %s", name, uid.Name(got.Meta.TransferSyntaxUID), uid.Name(s.Meta.TransferSyntaxUID))
		case got.Meta.MediaStorageSOPClassUID != s.Meta.MediaStorageSOPClassUID:
			t.Errorf("%s: stored with SOP class %s, want %s", name, got.Meta.MediaStorageSOPClassUID, s.Meta.MediaStorageSOPClassUID)
		case got.Meta.SourceApplicationEntityTitle != "STORESCU":
			t.Errorf("%s: source AE %q, want STORESCU", name, got.Meta.SourceApplicationEntityTitle)
		case !bytes.Equal(got.DataSet, want):
			t.Errorf("%s: stored data set of %d bytes differs from the %d bytes sent", name, len(got.DataSet), len(want))
		}
		out, err := exec.Command("dcmdump", path).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "["+s.Meta.MediaStorageSOPInstanceUID+"]") || strings.Contains(string(out), "E: ") {
			t.Errorf("dcmdump %s (%v):\n%s", path, err, out)
		}
	}
}

// TestStoreSCUToDCMTK: `pacsflow storescu` sends a folder to DCMTK's
// storescp, skips a file that is not DICOM, prints a summary and exits 0;
// storescp (+B: bytes as received) holds the data sets of the files.
func TestStoreSCUToDCMTK(t *testing.T) {
	bin := buildPacsflow(t)
	src := t.TempDir()
	var sent []sample
	for _, p := range samplePaths(t) {
		s := readSample(t, p)
		// An odd-length data set (the deflated 6.dcm) makes DCMTK abort the
		// association: pkg/dimse's TestClientStoreOddLengthDeflatedToDCMTK
		// covers that.
		if len(s.DataSet)%2 == 1 {
			continue
		}
		s.Path = copyFile(t, p, src)
		sent = append(sent, s)
	}
	notDICOM := filepath.Join(src, "notes.txt")
	if err := os.WriteFile(notDICOM, []byte("not a DICOM file\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	addr := startDCMTKStoreSCP(t, dir, "+B", "+xa")
	p := start(t, bin, "storescu", "--addr", addr, "--called-ae", "STORESCP", "--calling-ae", "PACSFLOW-SCU", src)
	p.mustSucceed(t)
	stdout, stderr := p.stdout.String(), p.stderr.String()
	if want := fmt.Sprintf("sent %d of %d files", len(sent), len(sent)); !strings.Contains(stdout, want) {
		t.Errorf("summary lacks %q:\n%s", want, stdout)
	}
	if !strings.Contains(stdout, "1  skipped: not DICOM Part 10") {
		t.Errorf("summary does not count the skipped file:\n%s", stdout)
	}
	if !strings.Contains(stderr, "skip "+notDICOM+": ") {
		t.Errorf("no message about skipping %s:\n%s", notDICOM, stderr)
	}

	stored := map[string]sample{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		s := readSample(t, filepath.Join(dir, e.Name()))
		stored[s.Meta.MediaStorageSOPInstanceUID] = s
	}
	if len(stored) != len(sent) {
		t.Errorf("storescp stored %d files, want %d", len(stored), len(sent))
	}
	for _, s := range sent {
		got, ok := stored[s.Meta.MediaStorageSOPInstanceUID]
		switch {
		case !ok:
			t.Errorf("%s was not stored", filepath.Base(s.Path))
		case got.Meta.TransferSyntaxUID != s.Meta.TransferSyntaxUID:
			t.Errorf("%s: stored in %s, want %s", filepath.Base(s.Path), uid.Name(got.Meta.TransferSyntaxUID), uid.Name(s.Meta.TransferSyntaxUID))
		case !bytes.Equal(got.DataSet, s.DataSet):
			t.Errorf("%s: stored data set of %d bytes differs from the %d bytes sent", filepath.Base(s.Path), len(got.DataSet), len(s.DataSet))
		}
	}
}

// TestEchoSCUCount: `pacsflow echoscu --count 200` against `pacsflow storescp`.
func TestEchoSCUCount(t *testing.T) {
	bin := buildPacsflow(t)
	_, addr := startStoreSCP(t, bin, "--dir", t.TempDir())
	p := start(t, bin, "echoscu", "--addr", addr, "--called-ae", "PACSFLOW", "--count", "200")
	p.mustSucceed(t)
	if out := p.stdout.String(); !strings.Contains(out, "200 C-ECHOs to PACSFLOW") || !strings.Contains(out, "; 0 failed") {
		t.Errorf("unexpected summary:\n%s", out)
	}
}

// TestHelp: --help prints the usage of each command and exits 0.
func TestHelp(t *testing.T) {
	bin := buildPacsflow(t)
	for _, c := range []struct{ args, want []string }{
		{[]string{"--help"}, []string{"Usage: pacsflow COMMAND", "storescp", "storescu", "echoscu"}},
		{[]string{"storescp", "--help"}, []string{"Usage: pacsflow storescp", "-dir", "-addr", "-allow"}},
		{[]string{"storescu", "--help"}, []string{"Usage: pacsflow storescu", "-addr", "-called-ae", "-associations"}},
		{[]string{"echoscu", "--help"}, []string{"Usage: pacsflow echoscu", "-addr", "-count"}},
		{[]string{"--help"}, []string{"up ", "ingest ", "events ", "dlq "}},
		{[]string{"up", "--help"}, []string{"Usage: pacsflow up", "embedded NATS", "JetStream", "C-STORE", "pacs.instance.stored", "pacs.study.received",
			"Ctrl-C", "-data", "-storage", "-dicom-addr", "-nats-listen", "-http-addr", "-quiet-period", "-allow", "-otlp-endpoint", "-analytics", "PACSFLOW_"}},
		{[]string{"ingest", "--help"}, []string{"Usage: pacsflow ingest", "external NATS", "-nats-url", "-dicom-addr", "-storage"}},
		{[]string{"events", "--help"}, []string{"Usage: pacsflow events", "tail"}},
		{[]string{"events", "tail", "--help"}, []string{"Usage: pacsflow events tail", "-since", "-seq", "-json", "-follow"}},
		{[]string{"dlq", "--help"}, []string{"Usage: pacsflow dlq", "list", "replay"}},
		{[]string{"up", "--help"}, []string{"ai.findings", "-model", "-triage-thresholds", "-batch-size", "-batch-wait", "not for clinical use"}},
		{[]string{"understand", "--help"}, []string{"Usage: pacsflow understand", "ai.triage", "ai.ask", "-nats-url", "-model", "-studies",
			"-decoders", "-ack-wait", "-max-deliver", "-storage", "machine-generated"}},
		{[]string{"ask", "--help"}, []string{"Usage: pacsflow ask", "STUDY_INSTANCE_UID QUESTION", "key image", "-nats-url", "-json"}},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			p := start(t, bin, c.args...)
			p.mustSucceed(t)
			usage := p.stdout.String() + p.stderr.String()
			for _, w := range c.want {
				if !strings.Contains(usage, w) {
					t.Errorf("usage lacks %q:\n%s", w, usage)
				}
			}
		})
	}
}

// TestStoreSCPRefusesNonLoopback: listening beyond loopback without a
// calling AE allow-list would accept any peer, so storescp refuses.
func TestStoreSCPRefusesNonLoopback(t *testing.T) {
	bin := buildPacsflow(t)
	p := start(t, bin, "storescp", "--dir", t.TempDir(), "--addr", "0.0.0.0:0")
	err := p.wait(t)
	if code := exitCode(err); code == 0 || code == -1 {
		t.Fatalf("storescp on 0.0.0.0 without --allow: %v, want a non-zero exit\nstdout:\n%s", err, p.stdout.String())
	}
	if out := p.stderr.String(); !strings.Contains(out, "--allow") {
		t.Errorf("the refusal does not point to --allow:\n%s", out)
	}
	if strings.Contains(p.stdout.String(), "listening") {
		t.Errorf("storescp listened before refusing:\n%s", p.stdout.String())
	}
}

// TestStoreSCPSIGINT: SIGINT shuts storescp down cleanly, exit status 0.
func TestStoreSCPSIGINT(t *testing.T) {
	bin := buildPacsflow(t)
	p, addr := startStoreSCP(t, bin, "--dir", t.TempDir())
	// One association first, so the shutdown follows real work.
	start(t, bin, "echoscu", "--addr", addr, "--called-ae", "PACSFLOW").mustSucceed(t)
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("storescp after SIGINT: %v\nstderr:\n%s", err, p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), "shutting down") {
		t.Errorf("storescp did not log its shutdown:\n%s", p.stderr.String())
	}
}
