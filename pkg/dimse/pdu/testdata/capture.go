//go:build ignore

// Command capture records the PDUs that real DICOM implementations exchange
// and writes them as seed corpora for the fuzz targets: each distinct PDU to
// pkg/dimse/pdu/testdata/fuzz/FuzzReader and each command set carried in a
// P-DATA-TF to pkg/dimse/testdata/fuzz/FuzzDecodeCommand.
//
// It starts an SCP, puts a TCP proxy on 127.0.0.1 in front of it, runs an
// SCU through the proxy and splits each direction of every connection into
// PDUs with nothing but the 6-byte PDU header, so that the corpus owes
// nothing to the codec it is meant to test. Data-set P-DATA-TF PDUs are
// thinned to the first and the last one of each data set, and the SCPs
// advertise the smallest maximum PDU length DCMTK allows (4096), to keep the
// corpus small. Files whose names start with "dcmtk-" or "pynetdicom-" are
// replaced on each run; other files (inputs found by the fuzzer) are left alone.
//
// Rerun it from the repository root; it needs DCMTK (echoscu, findscu,
// storescu, storescp on PATH; Debian's dcmtk 3.6.7 made the stored corpus)
// and a Python with pynetdicom (3.0.4 and pydicom 3.0.2 made it):
//
//	go run ./pkg/dimse/pdu/testdata/capture.go -python <venv>/bin/python
//
// The data sets sent are the small files of github.com/suyashkumar/dicom's
// testdata, found in the module cache (see -dicom).
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

var (
	python  = flag.String("python", "python3", "Python interpreter with pynetdicom installed")
	dicom   = flag.String("dicom", "", "directory with the DICOM files to send (default: suyashkumar/dicom@v1.1.0/testdata in the module cache)")
	pduOut  = flag.String("pdu-out", "pkg/dimse/pdu/testdata/fuzz/FuzzReader", "corpus directory of FuzzReader")
	cmdOut  = flag.String("cmd-out", "pkg/dimse/testdata/fuzz/FuzzDecodeCommand", "corpus directory of FuzzDecodeCommand")
	verbose = flag.Bool("v", false, "print the peers' output")
)

// capturedPrefixes mark the corpus files this tool owns.
var capturedPrefixes = []string{"dcmtk-", "pynetdicom-"}

// scenario is one run of an SCU against an SCP. The labels name the sender
// of each direction in the corpus file names.
type scenario struct {
	scuLabel, scpLabel string
	scp                func(port int) *exec.Cmd
	scu                func(port int) *exec.Cmd
	// scuMayFail is set where the SCU is expected to exit with an error:
	// a refused association, or an SCP that supports nothing it proposes.
	scuMayFail bool
}

func main() {
	log.SetFlags(0)
	flag.Parse()
	if *dicom == "" {
		out, err := exec.Command("go", "env", "GOMODCACHE").Output()
		if err != nil {
			log.Fatalf("go env GOMODCACHE: %v", err)
		}
		*dicom = filepath.Join(strings.TrimSpace(string(out)), "github.com/suyashkumar/dicom@v1.1.0/testdata")
	}
	// A PET and an MR image in Explicit VR Little Endian (65 KB each) and a
	// secondary capture in Deflated Explicit VR Little Endian (5 KB).
	files := []string{filepath.Join(*dicom, "1.dcm"), filepath.Join(*dicom, "3.dcm"), filepath.Join(*dicom, "6.dcm")}
	tmp, err := os.MkdirTemp("", "pdu-capture")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)

	storescp := func(extra ...string) func(int) *exec.Cmd {
		return func(port int) *exec.Cmd {
			args := append([]string{"-od", tmp, "--max-pdu", "4096", "+xa", "-aet", "STORESCP"}, extra...)
			return exec.Command("storescp", append(args, strconv.Itoa(port))...)
		}
	}
	dcmtk := func(tool string, args ...string) func(int) *exec.Cmd {
		return func(port int) *exec.Cmd {
			return exec.Command(tool, append(args, "127.0.0.1", strconv.Itoa(port))...)
		}
	}
	py := func(script string, args ...string) func(int) *exec.Cmd {
		return func(port int) *exec.Cmd {
			return exec.Command(*python, append([]string{"-c", script, strconv.Itoa(port)}, args...)...)
		}
	}
	scenarios := []scenario{
		{scuLabel: "dcmtk-echoscu", scpLabel: "dcmtk-storescp-echo",
			scp: storescp(), scu: dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "STORESCP")},
		// Two contexts with 38 transfer syntaxes each: a long request.
		{scuLabel: "dcmtk-echoscu-many-contexts", scpLabel: "dcmtk-storescp-many-contexts",
			scp: storescp(), scu: dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "STORESCP", "-ppc", "2", "-pts", "38")},
		{scuLabel: "dcmtk-echoscu-aborting", scpLabel: "dcmtk-storescp-aborted",
			scp: storescp(), scu: dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "STORESCP", "--abort")},
		{scuLabel: "dcmtk-echoscu-refused", scpLabel: "dcmtk-storescp-refuse", scuMayFail: true,
			scp: storescp("--refuse"), scu: dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "STORESCP")},
		// storescp offers no query/retrieve service: every context is rejected.
		{scuLabel: "dcmtk-findscu", scpLabel: "dcmtk-storescp-find", scuMayFail: true,
			scp: storescp(), scu: dcmtk("findscu", "-aet", "FINDSCU", "-aec", "STORESCP", "-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientName=")},
		{scuLabel: "dcmtk-storescu", scpLabel: "dcmtk-storescp-store",
			scp: storescp(), scu: func(port int) *exec.Cmd {
				// -R proposes the files' SOP classes only, not all 120-odd
				// storage classes: a request of 1 KB instead of 15.
				return exec.Command("storescu", append([]string{"-R", "-aet", "STORESCU", "-aec", "STORESCP", "127.0.0.1", strconv.Itoa(port)}, files...)...)
			}},
		{scuLabel: "pynetdicom-scu-to-dcmtk", scpLabel: "dcmtk-storescp-pynetdicom",
			scp: storescp(), scu: py(pynetdicomSCU, append([]string{"STORESCP", "password", "release"}, files...)...)},
		{scuLabel: "pynetdicom-scu", scpLabel: "pynetdicom-scp",
			scp: py(pynetdicomSCP, "PYNETDICOM-SCP"), scu: py(pynetdicomSCU, append([]string{"PYNETDICOM-SCP", "jwt", "release"}, files...)...)},
		{scuLabel: "pynetdicom-scu-aborting", scpLabel: "pynetdicom-scp-aborted",
			scp: py(pynetdicomSCP, "PYNETDICOM-SCP"), scu: py(pynetdicomSCU, "PYNETDICOM-SCP", "password", "abort")},
		// The pynetdicom SCP insists on its own AE title.
		{scuLabel: "dcmtk-echoscu-rejected", scpLabel: "pynetdicom-scp-reject", scuMayFail: true,
			scp: py(pynetdicomSCP, "PYNETDICOM-SCP"), scu: dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "WRONG-AE")},
	}

	var w writer
	for _, s := range scenarios {
		rec, err := run(s)
		if err != nil {
			log.Fatalf("%s -> %s: %v", s.scuLabel, s.scpLabel, err)
		}
		w.add(s.scuLabel, rec.pdus[fromSCU])
		w.add(s.scpLabel, rec.pdus[fromSCP])
	}
	if err := w.flush(*pduOut, *cmdOut); err != nil {
		log.Fatal(err)
	}
}

// Directions of a connection.
const (
	fromSCU = iota
	fromSCP
)

// recording holds the PDUs seen on the connections of one scenario, in
// order, per direction.
type recording struct {
	mu   sync.Mutex
	pdus [2][][]byte
}

func run(s scenario) (*recording, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	var scpOut bytes.Buffer
	scp := s.scp(port)
	scp.Stdout, scp.Stderr = &scpOut, &scpOut
	if err := scp.Start(); err != nil {
		return nil, err
	}
	defer func() {
		scp.Process.Kill()
		scp.Wait()
		if *verbose {
			fmt.Fprintf(os.Stderr, "--- %s\n%s", s.scpLabel, scpOut.Bytes())
		}
	}()
	target := fmt.Sprintf("127.0.0.1:%d", port)
	if err := waitListening(target); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, scpOut.Bytes())
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rec := &recording{}
	var conns sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				proxy(c.(*net.TCPConn), target, rec)
			}()
		}
	}()

	scu := s.scu(ln.Addr().(*net.TCPAddr).Port)
	out, err := scu.CombinedOutput()
	if *verbose {
		fmt.Fprintf(os.Stderr, "--- %s\n%s", s.scuLabel, out)
	}
	if err != nil && !s.scuMayFail {
		return nil, fmt.Errorf("%s: %w\n%s", s.scuLabel, err, out)
	}
	ln.Close()
	done := make(chan struct{})
	go func() { conns.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return nil, errors.New("the peers did not close the connection")
	}
	if len(rec.pdus[fromSCU]) == 0 || len(rec.pdus[fromSCP]) == 0 {
		return nil, fmt.Errorf("no PDU recorded in one direction\n%s\n%s", out, scpOut.Bytes())
	}
	return rec, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitListening dials the SCP directly (the probe is not recorded) until it
// accepts connections.
func waitListening(addr string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("SCP not listening on %s: %w", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// proxy relays one SCU connection to the SCP and records both directions.
func proxy(scu *net.TCPConn, target string, rec *recording) {
	defer scu.Close()
	c, err := net.Dial("tcp", target)
	if err != nil {
		log.Printf("proxy: %v", err)
		return
	}
	scp := c.(*net.TCPConn)
	defer scp.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); relay(scp, scu, fromSCU, rec) }()
	go func() { defer wg.Done(); relay(scu, scp, fromSCP, rec) }()
	wg.Wait()
}

// relay copies src to dst, splitting what passes into PDUs by their header.
// A trailing fragment that is not a whole PDU is dropped.
func relay(dst, src *net.TCPConn, dir int, rec *recording) {
	var pending []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
			pending = append(pending, buf[:n]...)
			for len(pending) >= 6 {
				total := 6 + int(binary.BigEndian.Uint32(pending[2:]))
				if len(pending) < total {
					break
				}
				rec.mu.Lock()
				rec.pdus[dir] = append(rec.pdus[dir], bytes.Clone(pending[:total]))
				rec.mu.Unlock()
				pending = pending[total:]
			}
		}
		if err != nil {
			break
		}
	}
	// Pass the half-close on, so that each peer sees the other hang up.
	dst.CloseWrite()
}

// writer names, thins and deduplicates the recorded PDUs.
type writer struct {
	pdus, cmds []corpusFile
	seen       map[[32]byte]string
	counts     map[string]int
}

type corpusFile struct {
	name string
	data []byte
}

// add files the PDUs one peer sent. P-DATA-TF PDUs are named after the
// command they carry; of the data-set PDUs only the first and the last of
// each data set are kept.
func (w *writer) add(sender string, pdus [][]byte) {
	var cmd []byte
	inDataSet := false
	for _, p := range pdus {
		kind, ok := pduKinds[p[0]]
		if !ok {
			log.Fatalf("%s sent a PDU of unknown type 0x%02X", sender, p[0])
		}
		if p[0] != 0x04 {
			w.keepPDU(sender+"-"+kind, p)
			continue
		}
		pdvs := splitPDVs(p)
		first, last := false, false
		var name string
		for _, v := range pdvs {
			if v.command {
				cmd = append(cmd, v.data...)
				if v.last {
					name = commandName(cmd)
					w.keepCommand(sender+"-"+name, cmd)
					cmd = nil
				}
				continue
			}
			if !inDataSet {
				first, inDataSet = true, true
			}
			if v.last {
				last, inDataSet = true, false
			}
		}
		switch {
		case name != "":
			w.keepPDU(sender+"-pdata-"+name, p)
		case first && last:
			w.keepPDU(sender+"-pdata-dataset-whole", p)
		case first:
			w.keepPDU(sender+"-pdata-dataset-first", p)
		case last:
			w.keepPDU(sender+"-pdata-dataset-last", p)
		}
	}
}

var pduKinds = map[byte]string{
	0x01: "associate-rq", 0x02: "associate-ac", 0x03: "associate-rj", 0x04: "pdata",
	0x05: "release-rq", 0x06: "release-rp", 0x07: "abort",
}

type pdv struct {
	command, last bool
	data          []byte
}

// splitPDVs parses the PDV items of a P-DATA-TF (PS3.8 §9.3.5).
func splitPDVs(p []byte) []pdv {
	var out []pdv
	body := p[6:]
	for len(body) >= 6 {
		n := int(binary.BigEndian.Uint32(body))
		if n < 2 || n > len(body)-4 {
			log.Fatalf("bad PDV item length %d", n)
		}
		out = append(out, pdv{command: body[5]&1 != 0, last: body[5]&2 != 0, data: body[6 : 4+n]})
		body = body[4+n:]
	}
	return out
}

// commandName finds the CommandField (0000,0100) of an Implicit VR Little
// Endian command set.
func commandName(cmd []byte) string {
	names := map[uint16]string{
		0x0001: "c-store-rq", 0x8001: "c-store-rsp", 0x0020: "c-find-rq", 0x8020: "c-find-rsp",
		0x0030: "c-echo-rq", 0x8030: "c-echo-rsp",
	}
	for b := cmd; len(b) >= 8; {
		tag := binary.LittleEndian.Uint32(b) // group in the low half
		n := int(binary.LittleEndian.Uint32(b[4:]))
		if n > len(b)-8 {
			break
		}
		if tag == 0x0100_0000 && n == 2 {
			f := binary.LittleEndian.Uint16(b[8:])
			if name, ok := names[f]; ok {
				return name
			}
			return fmt.Sprintf("command-%04x", f)
		}
		b = b[8+n:]
	}
	return "command"
}

func (w *writer) keepPDU(name string, data []byte) { w.pdus = w.keep(w.pdus, name, data) }

func (w *writer) keepCommand(name string, data []byte) { w.cmds = w.keep(w.cmds, name, data) }

// keep adds data under name unless the same bytes are already kept; a name
// used before gets a number.
func (w *writer) keep(files []corpusFile, name string, data []byte) []corpusFile {
	if w.seen == nil {
		w.seen, w.counts = map[[32]byte]string{}, map[string]int{}
	}
	sum := sha256.Sum256(data)
	if prev, ok := w.seen[sum]; ok {
		if *verbose {
			fmt.Fprintf(os.Stderr, "%s: same as %s\n", name, prev)
		}
		return files
	}
	w.counts[name]++
	if n := w.counts[name]; n > 1 {
		name = fmt.Sprintf("%s-%d", name, n)
	}
	w.seen[sum] = name
	return append(files, corpusFile{name, bytes.Clone(data)})
}

func (w *writer) flush(pduDir, cmdDir string) error {
	for _, d := range []struct {
		dir   string
		files []corpusFile
	}{{pduDir, w.pdus}, {cmdDir, w.cmds}} {
		if err := os.MkdirAll(d.dir, 0o755); err != nil {
			return err
		}
		old, err := os.ReadDir(d.dir)
		if err != nil {
			return err
		}
		for _, e := range old {
			for _, p := range capturedPrefixes {
				if strings.HasPrefix(e.Name(), p) {
					if err := os.Remove(filepath.Join(d.dir, e.Name())); err != nil {
						return err
					}
				}
			}
		}
		total := 0
		for _, f := range d.files {
			// The format of Go's fuzzing corpus files (internal/fuzz).
			content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", f.data)
			if err := os.WriteFile(filepath.Join(d.dir, f.name), []byte(content), 0o644); err != nil {
				return err
			}
			total += len(content)
		}
		fmt.Printf("%s: %d files, %d bytes\n", d.dir, len(d.files), total)
	}
	return nil
}

// pynetdicomSCU associates with the SCP named by argv[2] on the port in
// argv[1], proposing every extended negotiation sub-item pynetdicom knows:
// user identity (argv[3]: "password", or "jwt", to which pynetdicom's SCP
// answers with a server response), asynchronous operations window, SCP/SCU
// role selection, SOP class extended and common extended negotiation. It
// sends a C-ECHO and a C-STORE of each file in argv[5:], then releases or
// aborts as argv[4] says.
const pynetdicomSCU = `
import sys
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.pdu_primitives import (
    UserIdentityNegotiation, AsynchronousOperationsWindowNegotiation,
    SOPClassExtendedNegotiation, SOPClassCommonExtendedNegotiation)
from pynetdicom.sop_class import Verification

port, called, identity, end, files = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
datasets = [dcmread(f) for f in files]
ae = AE(ae_title="PYNETDICOM")
ae.add_requested_context(Verification)
for sop in dict.fromkeys(ds.SOPClassUID for ds in datasets):
    tss = [ds.file_meta.TransferSyntaxUID for ds in datasets if ds.SOPClassUID == sop]
    ae.add_requested_context(sop, list(dict.fromkeys(tss + [ExplicitVRLittleEndian, ImplicitVRLittleEndian])))

user = UserIdentityNegotiation()
user.positive_response_requested = True
if identity == "jwt":
    user.user_identity_type = 5
    user.primary_field = b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJwYWNzZmxvdyJ9."
else:
    user.user_identity_type = 2
    user.primary_field = b"pacsflow"
    user.secondary_field = b"secret"
window = AsynchronousOperationsWindowNegotiation()
window.maximum_number_operations_invoked = 5
window.maximum_number_operations_performed = 3
ext_neg = [user, window]
ct, enhanced_ct = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"
ext_neg.append(build_role(datasets[0].SOPClassUID if datasets else ct, scu_role=True, scp_role=True))
ext = SOPClassExtendedNegotiation()
ext.sop_class_uid = ct
ext.service_class_application_information = b"\x02\x00\x00\x00\x01\x00"
ext_neg.append(ext)
common = SOPClassCommonExtendedNegotiation()
common.sop_class_uid = enhanced_ct
common.service_class_uid = "1.2.840.10008.4.2"
common.related_general_sop_class_identification = [ct]
ext_neg.append(common)

assoc = ae.associate("127.0.0.1", port, ae_title=called, max_pdu=4096, ext_neg=ext_neg)
if not assoc.is_established:
    sys.exit("association not established")
status = assoc.send_c_echo()
if status.Status != 0:
    sys.exit("C-ECHO failed")
for ds in datasets:
    status = assoc.send_c_store(ds)
    if status.Status != 0:
        sys.exit("C-STORE failed")
if end == "abort":
    assoc.abort()
else:
    assoc.release()
`

// pynetdicomSCP serves C-ECHO and C-STORE on the port in argv[1] under the
// AE title in argv[2], rejecting any other called AE title, and answers
// every extended negotiation the SCU proposes.
const pynetdicomSCP = `
import sys
from pynetdicom import AE, evt, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts
from pynetdicom.sop_class import Verification

port, title = int(sys.argv[1]), sys.argv[2]
ae = AE(ae_title=title)
ae.maximum_pdu_size = 4096
ae.require_called_aet = True
ae.add_supported_context(Verification)
for cx in StoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=False)
handlers = [
    (evt.EVT_C_STORE, lambda event: 0x0000),
    (evt.EVT_USER_ID, lambda event: (True, b"token:" + event.primary_field)),
    (evt.EVT_ASYNC_OPS, lambda event: (1, 1)),
    (evt.EVT_SOP_EXTENDED, lambda event: event.app_info),
    (evt.EVT_SOP_COMMON, lambda event: event.items),
]
ae.start_server(("127.0.0.1", port), block=True, evt_handlers=handlers)
`
