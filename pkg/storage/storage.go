// Package storage keeps DICOM instances as immutable objects behind one
// small interface, with two backends: the local filesystem (package
// storage/fsstore) and a NATS JetStream object store (storage/objstore).
// The package storage/storagetest holds the conformance suite both pass.
package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pacsflow/pacsflow/pkg/uid"
)

// Object describes a stored object.
type Object struct {
	Key  string
	Size int64
	// SHA256 is the digest of the object's bytes, lowercase hex; computed
	// while the object was written and recorded with it.
	SHA256   string
	Modified time.Time
}

// Space is the capacity left to a store, for back-pressure.
type Space struct {
	// Free and Total are in bytes; -1 when the backend cannot tell.
	Free  int64
	Total int64
}

// Store is where instances live. Implementations are safe for concurrent use.
type Store interface {
	// Put streams r into a new object under key, computing its size and
	// SHA-256 on the way. The object becomes visible under key only once
	// complete and as durable as the backend promises; if Put fails (r
	// fails, ctx ends, the backend fails) nothing remains under key.
	// Objects are immutable: a key that exists gives ErrExists.
	Put(ctx context.Context, key string, r io.Reader) (Object, error)
	// Open returns the object's bytes. The caller closes the reader.
	Open(ctx context.Context, key string) (io.ReadCloser, Object, error)
	// Stat describes an object.
	Stat(ctx context.Context, key string) (Object, error)
	// Delete removes an object; deleting a missing key gives ErrNotFound.
	Delete(ctx context.Context, key string) error
	// Space reports the capacity left.
	Space(ctx context.Context) (Space, error)
}

// Errors every backend returns, wrapped with context; match with errors.Is.
var (
	ErrNotFound    = errors.New("object not found")
	ErrExists      = errors.New("object already exists")
	ErrInvalidKey  = errors.New("invalid object key")
	ErrFull        = errors.New("storage is full")
	ErrUnavailable = errors.New("storage is unavailable")
)

// Reader opens stored objects; every Store is one.
type Reader interface {
	Open(ctx context.Context, key string) (io.ReadCloser, Object, error)
}

// ErrTooLarge reports an object larger than ReadAll was allowed to read.
var ErrTooLarge = errors.New("object larger than allowed")

// ReadAll returns the bytes of the object under key. With limit > 0 it reads
// at most limit bytes, and an object larger than that is ErrTooLarge: an
// object that grew past what its event says is not read whole into memory.
func ReadAll(ctx context.Context, r Reader, key string, limit int64) ([]byte, error) {
	rc, obj, err := r.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var src io.Reader = rc
	size := obj.Size
	if limit > 0 {
		src, size = io.LimitReader(rc, limit+1), min(size, limit)
	}
	var buf bytes.Buffer
	buf.Grow(int(max(size, 0)) + bytes.MinRead)
	if _, err := buf.ReadFrom(src); err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if limit > 0 && int64(buf.Len()) > limit {
		return nil, fmt.Errorf("%w: %s has more than %d bytes", ErrTooLarge, key, limit)
	}
	return buf.Bytes(), nil
}

// maxKeyLen bounds keys: three UIDs, a version and separators.
const maxKeyLen = 3*uid.MaxLen + 64 + 3

// InstanceKey is the key of one stored version of an instance:
// STUDY/SERIES/INSTANCE.VERSION. The UIDs are validated, so no key can name
// a path outside the store; version is made of lowercase letters, digits
// and '-' (so the last '.' of the key separates it). A series is one
// folder of a filesystem store: one file per instance version, no folder
// per instance to create.
func InstanceKey(study, series, instance, version string) (string, error) {
	for _, u := range []struct{ name, v string }{{"study", study}, {"series", series}, {"instance", instance}} {
		if err := uid.Validate(u.v); err != nil {
			return "", fmt.Errorf("%w: %s instance UID: %w", ErrInvalidKey, u.name, err)
		}
	}
	if err := validVersion(version); err != nil {
		return "", err
	}
	return study + "/" + series + "/" + instance + "." + version, nil
}

// ValidateKey checks that key is made only of '/'-separated components of
// digits, lowercase letters, '.', '-' and '_', none of them empty, "." or
// "..". Backends call it before touching anything.
func ValidateKey(key string) error {
	if key == "" || len(key) > maxKeyLen {
		return fmt.Errorf("%w: length %d", ErrInvalidKey, len(key))
	}
	for _, comp := range strings.Split(key, "/") {
		if comp == "" || comp == "." || comp == ".." {
			return fmt.Errorf("%w: %q has an empty, '.' or '..' component", ErrInvalidKey, key)
		}
		for i := 0; i < len(comp); i++ {
			c := comp[i]
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c == '.' || c == '-' || c == '_') {
				return fmt.Errorf("%w: %q contains %q", ErrInvalidKey, key, c)
			}
		}
	}
	return nil
}

func validVersion(v string) error {
	if v == "" || len(v) > 64 {
		return fmt.Errorf("%w: version %q", ErrInvalidKey, v)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c == '-') {
			return fmt.Errorf("%w: version %q contains %q", ErrInvalidKey, v, c)
		}
	}
	return nil
}
