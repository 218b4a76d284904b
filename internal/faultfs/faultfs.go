// Package faultfs is a Pebble filesystem whose writes can be made to fail
// on demand, as a full or dying disk makes them fail: tests use it to show
// that the ledger fails closed and the gateway with it.
package faultfs

import (
	"sync/atomic"
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// FS is fs with syncs (and, with FailWrites, writes) that fail while
// failing is set.
type FS struct {
	vfs.FS
	sync   atomic.Bool
	writes atomic.Bool
}

// New wraps fs; nothing fails until told to.
func New(fs vfs.FS) *FS { return &FS{FS: fs} }

// FailSyncs makes every sync fail with EIO while on is true.
func (f *FS) FailSyncs(on bool) { f.sync.Store(on) }

// FailWrites makes every write fail with ENOSPC while on is true.
func (f *FS) FailWrites(on bool) { f.writes.Store(on) }

type file struct {
	vfs.File
	fs *FS
}

func (f *FS) wrap(fl vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return file{fl, f}, nil
}

func (f *FS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return f.wrap(f.FS.Create(name, c))
}

func (f *FS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return f.wrap(f.FS.ReuseForWrite(oldname, newname, c))
}

func (f *FS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return f.wrap(f.FS.OpenReadWrite(name, c, opts...))
}

func (f file) Write(p []byte) (int, error) {
	if f.fs.writes.Load() {
		return 0, syscall.ENOSPC
	}
	return f.File.Write(p)
}

func (f file) WriteAt(p []byte, off int64) (int, error) {
	if f.fs.writes.Load() {
		return 0, syscall.ENOSPC
	}
	return f.File.WriteAt(p, off)
}

func (f file) Sync() error {
	if f.fs.sync.Load() {
		return syscall.EIO
	}
	return f.File.Sync()
}

func (f file) SyncData() error {
	if f.fs.sync.Load() {
		return syscall.EIO
	}
	return f.File.SyncData()
}

func (f file) SyncTo(n int64) (bool, error) {
	if f.fs.sync.Load() {
		return false, syscall.EIO
	}
	return f.File.SyncTo(n)
}
