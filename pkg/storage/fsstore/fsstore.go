// Package fsstore keeps objects as files under a root folder: the object
// with key STUDY/SERIES/INSTANCE/VERSION is the file
// ROOT/STUDY/SERIES/INSTANCE/VERSION.
//
// Layout and guarantees:
//
//   - A Put writes into a temporary file in ROOT/.tmp#/ (the same
//     filesystem), then gives it its final name with a rename that never
//     replaces an existing file, so a reader sees either no object or a
//     complete one, and of two concurrent Puts of one key exactly one wins.
//     Every name the store keeps for itself contains '#', which no valid
//     key can contain: no key can reach the temporaries or a digest record.
//   - The SHA-256 of each object is recorded with it: in the extended
//     attribute user.pacsflow.sha256 where the filesystem supports user
//     extended attributes (New tries), otherwise in a sidecar file
//     KEY#sha256 next to the object. Copying a store elsewhere must keep
//     the attributes (cp -a, rsync -X); an object whose record is missing
//     has its digest computed from its bytes when asked.
//   - With Config.Sync, Put returns only once the file, its digest and its
//     name are on disk (fsync of the file and of every folder from the
//     object's up to ROOT).
//   - A key that is a folder of another key (a/b and a/b/c) cannot be
//     stored in a filesystem; the second one gets storage.ErrInvalidKey.
//     Keys made by storage.InstanceKey all have four components and never
//     collide this way.
//   - A root belongs to one Store at a time: New removes whatever is in
//     ROOT/.tmp#/, which would break another process's Puts in progress.
package fsstore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pacsflow/pacsflow/pkg/storage"
)

const (
	// tmpDirName holds Puts in progress. The '#' keeps it out of reach of
	// keys: ".tmp" alone is a valid key component.
	tmpDirName = ".tmp#"
	// sidecarSuffix names the digest record of an object where extended
	// attributes are not available.
	sidecarSuffix = "#sha256"
	// xattrName is the extended attribute holding an object's digest.
	xattrName = "user.pacsflow.sha256"
	// pieceSize bounds each write: 64 KiB pieces ran faster and steadier
	// than larger writes here (see chunkedWriter in cmd/pacsflow).
	pieceSize = 64 << 10
	// commitTries bounds how often Put recreates a parent folder that a
	// concurrent Delete pruned under it.
	commitTries = 8
)

// Config configures a Store.
type Config struct {
	// Root is the folder holding the objects; created if missing. Required.
	Root string
	// Sync makes Put durable before it returns: fsync of the file and of
	// the folders on its path. Delete then also fsyncs the folder it
	// changed.
	Sync bool
}

// Store is a storage.Store on a local filesystem. It is safe for
// concurrent use.
type Store struct {
	root string
	tmp  string
	sync bool
	// xattr records digests in extended attributes; false means sidecar
	// files.
	xattr bool
	// linkRename commits with link+unlink where the filesystem refuses
	// renameat2's RENAME_NOREPLACE.
	linkRename bool
}

var _ storage.Store = (*Store)(nil)

// New opens (creating it if needed) the store under cfg.Root, removes the
// temporaries that a crash left behind, and finds out what the filesystem
// supports: user extended attributes and no-replace renames.
func New(cfg Config) (*Store, error) {
	if cfg.Root == "" {
		return nil, errors.New("fsstore: Root is required")
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("fsstore: root %s: %w", cfg.Root, err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("fsstore: create root: %w", err)
	}
	s := &Store{root: root, tmp: filepath.Join(root, tmpDirName), sync: cfg.Sync}
	// Temporaries are never objects, so whatever is there is a leftover.
	if err := os.RemoveAll(s.tmp); err != nil {
		return nil, fmt.Errorf("fsstore: remove leftover temporaries: %w", err)
	}
	if err := os.Mkdir(s.tmp, 0o700); err != nil {
		return nil, fmt.Errorf("fsstore: create %s: %w", s.tmp, err)
	}
	if err := s.probe(); err != nil {
		return nil, fmt.Errorf("fsstore: probe %s: %w", root, err)
	}
	return s, nil
}

// probe tries an extended attribute and a no-replace rename on a scratch
// file in the temporary folder, which is on the objects' filesystem.
func (s *Store) probe() error {
	f, err := os.CreateTemp(s.tmp, "probe-*")
	if err != nil {
		return err
	}
	name := f.Name()
	defer os.Remove(name)
	err = unix.Fsetxattr(int(f.Fd()), xattrName, []byte(emptyDigest), 0)
	if cerr := f.Close(); err == nil && cerr != nil {
		return cerr
	}
	switch {
	case err == nil:
		s.xattr = true
	case errors.Is(err, unix.ENOTSUP):
		s.xattr = false
	default:
		return fmt.Errorf("set extended attribute: %w", err)
	}
	moved := name + "-renamed"
	err = unix.Renameat2(unix.AT_FDCWD, name, unix.AT_FDCWD, moved, unix.RENAME_NOREPLACE)
	switch {
	case err == nil:
		return os.Rename(moved, name)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.ENOTSUP):
		s.linkRename = true
		return nil
	default:
		return fmt.Errorf("rename: %w", err)
	}
}

// emptyDigest is the SHA-256 of no bytes, the probe's attribute value.
var emptyDigest = hex.EncodeToString(sha256.New().Sum(nil))

func (s *Store) path(key string) string {
	return filepath.Join(s.root, filepath.FromSlash(key))
}

// Put stores r under key; see storage.Store. r is read in pieces of at
// most 64 KiB and ctx is checked between them: a reader that blocks
// ignoring ctx holds Put up.
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
	final := s.path(key)
	// Only a cheap early answer: the no-replace rename decides.
	if fi, err := os.Lstat(final); err == nil {
		return storage.Object{}, existing(fi)
	}
	f, err := createTemp(s.tmp, "put-")
	if err != nil {
		return storage.Object{}, fsErr(err)
	}
	tmp := f.Name()
	obj, err := s.fill(ctx, f, r)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fsErr(cerr)
	}
	if err == nil {
		// A Put whose ctx ended after its last read still fails whole.
		err = ctx.Err()
	}
	if err == nil {
		err = s.commit(tmp, final)
	}
	if err != nil {
		_ = os.Remove(tmp)
		s.prune(filepath.Dir(final))
		return storage.Object{}, err
	}
	// The object is visible now; failing from here on must take it back.
	if err := s.finish(final, obj.SHA256); err != nil {
		_ = os.Remove(final)
		_ = os.Remove(final + sidecarSuffix)
		s.prune(filepath.Dir(final))
		return storage.Object{}, err
	}
	obj.Key = key
	return obj, nil
}

// fill copies r into the temporary file f, hashing on the way, and
// records the digest in f's extended attribute where there is one.
func (s *Store) fill(ctx context.Context, f *os.File, r io.Reader) (storage.Object, error) {
	h := sha256.New()
	size, err := copyHashed(ctx, f, r, h)
	if err != nil {
		return storage.Object{}, err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if s.xattr {
		if err := unix.Fsetxattr(int(f.Fd()), xattrName, []byte(sum), 0); err != nil {
			return storage.Object{}, fsErr(fmt.Errorf("record digest in %s: %w", xattrName, err))
		}
	}
	if s.sync {
		if err := f.Sync(); err != nil {
			return storage.Object{}, fsErr(err)
		}
	}
	return storage.Object{Size: size, SHA256: sum, Modified: time.Now()}, nil
}

// copyHashed copies r to w in pieces of at most pieceSize, feeding h on
// another goroutine: hashing costs about as much as writing, and with the
// two overlapping an instance is on disk and digested sooner. Errors of w
// are filesystem errors; errors of r are wrapped as reads.
func copyHashed(ctx context.Context, w io.Writer, r io.Reader, h hash.Hash) (int64, error) {
	const inFlight = 3
	free := make(chan *[]byte, inFlight)
	for range inFlight {
		free <- piecePool.Get().(*[]byte)
	}
	hashing := make(chan *[]byte, inFlight)
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for b := range hashing {
			h.Write(*b)
			free <- b
		}
	}()
	n, err := copyPieces(ctx, w, r, free, hashing)
	close(hashing)
	<-hashed
	for range inFlight {
		b := <-free
		*b = (*b)[:pieceSize]
		piecePool.Put(b)
	}
	return n, err
}

// copyPieces reads r into free pieces, writes each to w and passes it on
// to be hashed.
func copyPieces(ctx context.Context, w io.Writer, r io.Reader, free <-chan *[]byte, hashing chan<- *[]byte) (int64, error) {
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		b := <-free
		m, rerr := r.Read((*b)[:pieceSize])
		*b = (*b)[:m]
		if m > 0 {
			if _, err := w.Write(*b); err != nil {
				hashing <- b
				return n, fsErr(err)
			}
			n += int64(m)
		}
		hashing <- b
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, fmt.Errorf("read: %w", rerr)
		}
	}
}

// createTemp creates a new file in dir, readable by all like any object
// (os.CreateTemp's files are private and would need a chmod each).
func createTemp(dir, prefix string) (*os.File, error) {
	for try := 0; ; try++ {
		var r [8]byte
		_, _ = rand.Read(r[:]) // crypto/rand.Read never returns an error
		f, err := os.OpenFile(filepath.Join(dir, prefix+hex.EncodeToString(r[:])), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil || !errors.Is(err, fs.ErrExist) || try == 9 {
			return f, err
		}
	}
}

// piecePool recycles the copy buffers of Put.
var piecePool = sync.Pool{New: func() any { b := make([]byte, pieceSize); return &b }}

// commit gives the complete temporary file its final name, creating the
// folders on the way, without ever replacing an existing file.
//
// A concurrent Delete may prune a folder, empty for a moment, under
// commit's feet: between the mkdir of a folder and that of its child or
// the rename (ENOENT), or between another Put's mkdir and this one's look
// at it (EEXIST from MkdirAll). Either way commit tries again.
func (s *Store) commit(tmp, final string) error {
	for try := 1; ; try++ {
		// The folder exists for all but a series' first instance: try the
		// rename first, and create folders only when it says they are missing.
		err := s.rename(tmp, final)
		raced := false
		if errors.Is(err, fs.ErrNotExist) {
			err = os.MkdirAll(filepath.Dir(final), 0o755)
			raced = errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrExist)
			if err == nil {
				err = s.rename(tmp, final)
				raced = errors.Is(err, fs.ErrNotExist)
			}
		}
		switch {
		case err == nil:
			if s.linkRename {
				// The object is complete under its name; a temporary name
				// that stays behind is removed by the next New.
				_ = os.Remove(tmp)
			}
			return nil
		case raced && try < commitTries:
		case errors.Is(err, syscall.ENOTDIR):
			return fmt.Errorf("%w: an object holds the place of one of its folders", storage.ErrInvalidKey)
		case errors.Is(err, fs.ErrExist):
			fi, serr := os.Lstat(final)
			if serr != nil {
				return fsErr(err)
			}
			return existing(fi)
		default:
			return fsErr(err)
		}
	}
}

// rename moves from to to, failing with EEXIST where to exists.
func (s *Store) rename(from, to string) error {
	if s.linkRename {
		return os.Link(from, to)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE); err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// existing is the error for a Put whose final name is taken by fi.
func existing(fi fs.FileInfo) error {
	if fi.Mode().IsRegular() {
		return storage.ErrExists
	}
	return fmt.Errorf("%w: the key is a folder of other objects", storage.ErrInvalidKey)
}

// finish does what follows the rename of a new object: its sidecar digest
// record where there are no extended attributes, and with Sync the fsync
// of the folders.
func (s *Store) finish(final, sum string) error {
	if !s.xattr {
		if err := s.writeSidecar(final+sidecarSuffix, sum); err != nil {
			return err
		}
	}
	if !s.sync {
		return nil
	}
	// Every folder up to the root, not only those this Put created: a
	// folder that a concurrent Put created may not be on disk yet.
	for dir := filepath.Dir(final); ; dir = filepath.Dir(dir) {
		if err := syncDir(dir); err != nil {
			return fsErr(err)
		}
		if dir == s.root {
			return nil
		}
	}
}

// writeSidecar records sum in the file name, replacing any record there:
// only the Put that won the object's name writes one.
func (s *Store) writeSidecar(name, sum string) error {
	f, err := os.CreateTemp(s.tmp, "sha256-*")
	if err != nil {
		return fsErr(err)
	}
	tmp := f.Name()
	_, err = f.WriteString(sum + "\n")
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil && s.sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fsErr(fmt.Errorf("record digest: %w", err))
	}
	return nil
}

// Open returns the object's file; see storage.Store.
func (s *Store) Open(ctx context.Context, key string) (io.ReadCloser, storage.Object, error) {
	if err := storage.ValidateKey(key); err != nil {
		return nil, storage.Object{}, fmt.Errorf("open: %w", err)
	}
	f, err := os.Open(s.path(key))
	if err != nil {
		return nil, storage.Object{}, fmt.Errorf("open %s: %w", key, notFound(err))
	}
	obj, err := s.describe(ctx, key, f)
	if err != nil {
		_ = f.Close()
		return nil, storage.Object{}, fmt.Errorf("open %s: %w", key, err)
	}
	return f, obj, nil
}

// Stat describes an object; see storage.Store.
func (s *Store) Stat(ctx context.Context, key string) (storage.Object, error) {
	if err := storage.ValidateKey(key); err != nil {
		return storage.Object{}, fmt.Errorf("stat: %w", err)
	}
	f, err := os.Open(s.path(key))
	if err != nil {
		return storage.Object{}, fmt.Errorf("stat %s: %w", key, notFound(err))
	}
	defer f.Close()
	obj, err := s.describe(ctx, key, f)
	if err != nil {
		return storage.Object{}, fmt.Errorf("stat %s: %w", key, err)
	}
	return obj, nil
}

// describe makes the Object of the open file f, which must be a regular
// file (a folder is no object). It leaves f's offset at 0.
func (s *Store) describe(ctx context.Context, key string, f *os.File) (storage.Object, error) {
	fi, err := f.Stat()
	if err != nil {
		return storage.Object{}, err
	}
	if !fi.Mode().IsRegular() {
		return storage.Object{}, storage.ErrNotFound
	}
	sum, err := s.recorded(f)
	if err != nil {
		return storage.Object{}, err
	}
	if sum == "" {
		if sum, err = computeDigest(ctx, f); err != nil {
			return storage.Object{}, err
		}
	}
	return storage.Object{Key: key, Size: fi.Size(), SHA256: sum, Modified: fi.ModTime()}, nil
}

// recorded returns the digest recorded with the open object f, or "" when
// none is (an object copied without its attributes, or a sidecar not yet
// written by a Put in progress).
func (s *Store) recorded(f *os.File) (string, error) {
	var b []byte
	if s.xattr {
		var buf [2 * sha256.Size]byte
		n, err := unix.Fgetxattr(int(f.Fd()), xattrName, buf[:])
		switch {
		case errors.Is(err, unix.ENODATA):
			return "", nil
		case errors.Is(err, unix.ERANGE):
			return "", fmt.Errorf("corrupt digest record in %s: too long", xattrName)
		case err != nil:
			return "", fmt.Errorf("read digest record: %w", err)
		}
		b = buf[:n]
	} else {
		var err error
		b, err = os.ReadFile(f.Name() + sidecarSuffix)
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("read digest record: %w", err)
		}
		if len(b) > 0 && b[len(b)-1] == '\n' {
			b = b[:len(b)-1]
		}
	}
	if !isDigest(b) {
		return "", fmt.Errorf("corrupt digest record %q", b)
	}
	return string(b), nil
}

func isDigest(b []byte) bool {
	if len(b) != 2*sha256.Size {
		return false
	}
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// computeDigest hashes f from its start and rewinds it.
func computeDigest(ctx context.Context, f *os.File) (string, error) {
	h := sha256.New()
	if _, err := copyHashed(ctx, io.Discard, f, h); err != nil {
		return "", fmt.Errorf("compute digest: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Delete removes an object and the folders it leaves empty; see
// storage.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := storage.ValidateKey(key); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	if err := s.delete(key); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

func (s *Store) delete(key string) error {
	final := s.path(key)
	fi, err := os.Lstat(final)
	if err != nil {
		return notFound(err)
	}
	if !fi.Mode().IsRegular() {
		return storage.ErrNotFound
	}
	// The record goes first: an object whose record is missing still has
	// the right digest (computed), a record without its object could be
	// taken for a later object's.
	if !s.xattr {
		if err := os.Remove(final + sidecarSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := os.Remove(final); err != nil {
		return notFound(err)
	}
	changed := s.prune(filepath.Dir(final))
	if s.sync {
		return syncDir(changed)
	}
	return nil
}

// prune removes dir and its parents below the root while they are empty,
// and returns the folder whose entries changed last (the parent of the
// last one removed, or dir).
func (s *Store) prune(dir string) string {
	for dir != s.root && len(dir) > len(s.root) {
		// Remove fails on a folder that is not empty, which ends the walk;
		// a concurrent Put that loses its folder this way makes it again.
		if os.Remove(dir) != nil {
			return dir
		}
		dir = filepath.Dir(dir)
	}
	return dir
}

// Space reports the filesystem's free space (as available to unprivileged
// users) and size.
func (s *Store) Space(ctx context.Context) (storage.Space, error) {
	return DiskSpace(s.root)
}

// DiskSpace reports the free space and size of the filesystem holding dir.
func DiskSpace(dir string) (storage.Space, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return storage.Space{}, fmt.Errorf("space: statfs %s: %w", dir, err)
	}
	bsize := st.Frsize
	if bsize <= 0 {
		bsize = st.Bsize
	}
	return storage.Space{Free: int64(st.Bavail) * bsize, Total: int64(st.Blocks) * bsize}, nil
}

// fsErr marks errors of a full filesystem or quota as storage.ErrFull.
func fsErr(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", storage.ErrFull, err)
	}
	return err
}

// notFound marks errors of a missing file as storage.ErrNotFound. ENOTDIR
// means a component of the path is an object, so the key is none.
func notFound(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
