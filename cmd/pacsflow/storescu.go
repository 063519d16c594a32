package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

func runStoreSCU(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fset := newFlagSet("storescu [flags] PATH...",
		"Sends DICOM Part 10 files over C-STORE. PATHs are files or folders (searched recursively).\n"+
			"Each file's data set is sent as it is stored, in its own transfer syntax: one presentation\n"+
			"context is proposed per SOP class and transfer syntax found. Prints progress on a terminal\n"+
			"and a summary of statuses; exits non-zero if any file was not stored.", stderr)
	cf := addClientFlags(fset)
	nAssoc := fset.Int("associations", 1, "number of concurrent associations to spread the files over")
	if err := parseFlags(fset, args); err != nil {
		return err
	}
	cfg, err := cf.config()
	if err != nil {
		return err
	}
	if fset.NArg() == 0 {
		fset.Usage()
		return errUsage
	}
	if *nAssoc < 1 {
		return fmt.Errorf("--associations must be at least 1")
	}
	files, skipped, err := scanFiles(fset.Args(), stderr)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no DICOM Part 10 files under %v", fset.Args())
	}
	p := newProgress(stderr, len(files))
	start := time.Now()
	stopProgress := p.run(ctx)
	results := sendAll(ctx, *cf.addr, cfg, files, *nAssoc, p)
	stopProgress()
	elapsed := time.Since(start)
	return summarize(stdout, results, skipped, p.bytes.Load(), elapsed)
}

// dicomFile is a Part 10 file found on disk.
type dicomFile struct {
	path     string
	sopClass string
	sopInst  string
	ts       string
	size     int64
}

// scanFiles walks the paths and reads each file's meta information.
func scanFiles(paths []string, stderr io.Writer) ([]dicomFile, int, error) {
	var files []dicomFile
	skipped := 0
	for _, root := range paths {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				return nil
			}
			f, err := readMeta(path)
			if err != nil {
				skipped++
				fmt.Fprintf(stderr, "skip %s: %v\n", path, err)
				return nil
			}
			files = append(files, f)
			return nil
		})
		if err != nil {
			return nil, 0, fmt.Errorf("scan %s: %w", root, err)
		}
	}
	return files, skipped, nil
}

func readMeta(path string) (dicomFile, error) {
	fh, err := os.Open(path)
	if err != nil {
		return dicomFile{}, err
	}
	defer fh.Close()
	r, err := part10.NewReader(fh)
	if err != nil {
		return dicomFile{}, err
	}
	st, err := fh.Stat()
	if err != nil {
		return dicomFile{}, err
	}
	return dicomFile{path: path, sopClass: r.Meta.MediaStorageSOPClassUID, sopInst: r.Meta.MediaStorageSOPInstanceUID,
		ts: r.Meta.TransferSyntaxUID, size: st.Size() - r.DataSetOffset}, nil
}

// sendResult is the outcome of one file.
type sendResult struct {
	file dicomFile
	res  dimse.Result
	err  error
}

// sendAll spreads files over n associations and sends them.
func sendAll(ctx context.Context, addr string, cfg dimse.ClientConfig, files []dicomFile, n int, p *progress) []sendResult {
	n = min(n, len(files))
	out := make([]sendResult, len(files))
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		var idx []int
		for i := w; i < len(files); i += n {
			idx = append(idx, i)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sendBatch(ctx, addr, cfg, files, idx, out, p)
		}()
	}
	wg.Wait()
	return out
}

// maxContexts is the number of presentation contexts one A-ASSOCIATE-RQ can
// propose (odd IDs 1 to 255).
const maxContexts = 128

// sendBatch sends files[idx] over one association at a time, each
// association proposing at most maxContexts (SOP class, transfer syntax)
// pairs. A broken association is re-established for the files left.
func sendBatch(ctx context.Context, addr string, cfg dimse.ClientConfig, files []dicomFile, idx []int, out []sendResult, p *progress) {
	for len(idx) > 0 {
		props, take := proposalsFor(files, idx)
		batch := idx[:take]
		idx = idx[take:]
		c, err := dimse.Dial(ctx, addr, cfg, props)
		if err != nil {
			for _, i := range batch {
				out[i] = sendResult{file: files[i], err: err}
				p.done(0)
			}
			continue
		}
		for k, i := range batch {
			res, err := sendFile(ctx, c, files[i])
			out[i] = sendResult{file: files[i], res: res, err: err}
			if err == nil {
				p.done(files[i].size)
				continue
			}
			p.done(0)
			if errors.Is(err, dimse.ErrNoContext) || errors.Is(err, errFile) {
				continue
			}
			// The association is gone: start another for the rest.
			idx = append(batch[k+1:], idx...)
			c = nil
			break
		}
		if c != nil {
			if err := c.Release(); err != nil {
				p.warn("release: %v", err)
			}
		}
	}
}

// proposalsFor returns the presentation contexts for a prefix of idx that
// fits one association, and the length of that prefix.
func proposalsFor(files []dicomFile, idx []int) ([]dimse.Proposal, int) {
	type pair struct{ sop, ts string }
	seen := map[pair]bool{}
	var props []dimse.Proposal
	for n, i := range idx {
		k := pair{files[i].sopClass, files[i].ts}
		if seen[k] {
			continue
		}
		if len(props) == maxContexts {
			return props, n
		}
		seen[k] = true
		props = append(props, dimse.Proposal{AbstractSyntax: k.sop, TransferSyntaxes: []string{k.ts}})
	}
	return props, len(idx)
}

// errFile marks failures of one file that leave the association usable.
var errFile = errors.New("file")

func sendFile(ctx context.Context, c *dimse.Client, f dicomFile) (dimse.Result, error) {
	if f.size%2 == 1 && f.ts != uid.DeflatedExplicitVRLittleEndian {
		// Checked here, before the association would have to be aborted mid-way.
		return dimse.Result{}, fmt.Errorf("%w: %w (%d bytes)", errFile, dimse.ErrOddLength, f.size)
	}
	fh, err := os.Open(f.path)
	if err != nil {
		return dimse.Result{}, fmt.Errorf("%w: %w", errFile, err)
	}
	defer fh.Close()
	r, err := part10.NewReader(fh)
	if err != nil {
		return dimse.Result{}, fmt.Errorf("%w: %w", errFile, err)
	}
	return c.Store(ctx, dimse.StoreRequest{AffectedSOPClassUID: f.sopClass, AffectedSOPInstanceUID: f.sopInst}, f.ts, r)
}

func summarize(w io.Writer, results []sendResult, skipped int, bytes int64, elapsed time.Duration) error {
	byStatus := map[string]int{}
	ok := 0
	for _, r := range results {
		switch {
		case r.err != nil:
			byStatus["not sent: "+r.err.Error()]++
		case r.res.Status.IsFailure():
			k := r.res.Status.String()
			if r.res.Comment != "" {
				k += ": " + r.res.Comment
			}
			byStatus[k]++
		default:
			ok++
			byStatus[r.res.Status.String()]++
		}
	}
	secs := elapsed.Seconds()
	fmt.Fprintf(w, "sent %d of %d files (%.1f MB) in %.2f s: %.0f inst/s, %.1f MB/s\n",
		ok, len(results), float64(bytes)/1e6, secs, float64(ok)/secs, float64(bytes)/1e6/secs)
	keys := make([]string, 0, len(byStatus))
	for k := range byStatus {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %6d  %s\n", byStatus[k], k)
	}
	if skipped > 0 {
		fmt.Fprintf(w, "  %6d  skipped: not DICOM Part 10\n", skipped)
	}
	if ok != len(results) {
		return fmt.Errorf("%d of %d files were not stored", len(results)-ok, len(results))
	}
	return nil
}

// progress reports how far a transfer is, on stderr.
type progress struct {
	w     io.Writer
	total int
	n     atomic.Int64
	bytes atomic.Int64
	mu    sync.Mutex
	tty   bool
	start time.Time
}

func newProgress(w io.Writer, total int) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progress{w: w, total: total, tty: tty, start: time.Now()}
}

func (p *progress) done(bytes int64) {
	p.n.Add(1)
	p.bytes.Add(bytes)
}

func (p *progress) warn(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// run prints a progress line every half second on a terminal, every ten
// seconds otherwise, until the returned stop function is called.
func (p *progress) run(ctx context.Context) (stop func()) {
	every := 10 * time.Second
	if p.tty {
		every = 500 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				if p.tty {
					p.print("\n")
				}
				return
			case <-t.C:
				end := "\n"
				if p.tty {
					end = ""
				}
				p.print(end)
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

func (p *progress) print(end string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, b := p.n.Load(), p.bytes.Load()
	secs := time.Since(p.start).Seconds()
	prefix := ""
	if p.tty {
		prefix = "\r"
	}
	fmt.Fprintf(p.w, "%s%d/%d files, %.1f MB, %.0f inst/s, %.1f MB/s%s", prefix, n, p.total, float64(b)/1e6, float64(n)/secs, float64(b)/1e6/secs, end)
}
