package storagetest

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/pacsflow/pacsflow/pkg/storage"
)

// Objects is an in-memory storage.Reader for the tests of services that
// read what ingest stored: key → the object's bytes. Not safe for writes
// concurrent with reads.
type Objects map[string][]byte

// Open gives the object under key, or storage.ErrNotFound.
func (o Objects) Open(_ context.Context, key string) (io.ReadCloser, storage.Object, error) {
	b, ok := o[key]
	if !ok {
		return nil, storage.Object{}, fmt.Errorf("open %s: %w", key, storage.ErrNotFound)
	}
	return io.NopCloser(bytes.NewReader(b)), storage.Object{Key: key, Size: int64(len(b))}, nil
}
