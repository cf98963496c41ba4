package fusedisk

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The subset of the kernel's FUSE protocol (include/uapi/linux/fuse.h,
// version 7) that a file system holding one regular file needs. Every
// structure is little-endian on x86_64 and padded to 8 bytes; the sizes
// below are the ones the kernel sends for the minor versions we accept.

const (
	kernelMajor = 7
	// ourMinor is the protocol minor we speak. The kernel uses the lower of
	// its own and ours; 31 has every structure we parse at its final size.
	ourMinor = 31
	// minMinor is the oldest kernel minor we accept: 7.28 (Linux 4.20)
	// added max_pages, which lets one request carry 1 MiB.
	minMinor = 28

	rootID = 1 // FUSE_ROOT_ID: the mount's root, here the file itself
)

// Opcodes (enum fuse_opcode).
const (
	opLookup      = 1
	opForget      = 2
	opGetattr     = 3
	opSetattr     = 4
	opOpen        = 14
	opRead        = 15
	opWrite       = 16
	opStatfs      = 17
	opRelease     = 18
	opFsync       = 20
	opGetxattr    = 22
	opListxattr   = 23
	opFlush       = 25
	opInit        = 26
	opAccess      = 34
	opInterrupt   = 36
	opDestroy     = 38
	opBatchForget = 42
	opFallocate   = 43
	opLseek       = 46
)

// Sizes of the fixed parts.
const (
	inHeaderSize  = 40 // fuse_in_header
	outHeaderSize = 16 // fuse_out_header
	initInSize    = 16 // fuse_init_in up to flags; later fields are optional to us
	initOutSize   = 64 // fuse_init_out (7.23+)
	attrSize      = 88 // fuse_attr
	attrOutSize   = 16 + attrSize
	setattrInSize = 88
	openInSize    = 8
	openOutSize   = 16
	readInSize    = 40
	writeInSize   = 40 // 7.9+
	writeOutSize  = 8
	fsyncInSize   = 16
	fallocInSize  = 32
	statfsOutSize = 80
)

// INIT flags we use (fuse_init_in/out.flags).
const (
	initAsyncRead = 1 << 0
	initBigWrites = 1 << 5
	initMaxPages  = 1 << 22
)

// fuse_setattr_in.valid bits.
const (
	fattrMode      = 1 << 0
	fattrUID       = 1 << 1
	fattrGID       = 1 << 2
	fattrSize      = 1 << 3
	fattrAtime     = 1 << 4
	fattrMtime     = 1 << 5
	fattrFh        = 1 << 6
	fattrAtimeNow  = 1 << 7
	fattrMtimeNow  = 1 << 8
	fattrLockOwner = 1 << 9
	fattrCtime     = 1 << 10
	fattrKillSUID  = 1 << 11
	// fattrHarmless are changes we accept and ignore: times, and the flags
	// that only say which handle or owner asked.
	fattrHarmless = fattrAtime | fattrMtime | fattrCtime | fattrAtimeNow | fattrMtimeNow | fattrFh | fattrLockOwner | fattrKillSUID
)

// fuse_open_out.open_flags. DIRECT_IO: no page cache of the FUSE file
// itself; the loop device above it and the chunk files below it are
// cached already, and a third copy would only cost RAM. NOFLUSH: no FLUSH
// request at close(2). A process that serves its own file and dies with
// the file open would otherwise hang in exit forever, its close waiting
// for an answer from threads that are gone.
const (
	fopenDirectIO = 1 << 0
	fopenNoFlush  = 1 << 5
)

// fallocate(2) modes the kernel passes through.
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

// request is one decoded message from the kernel.
type request struct {
	opcode uint32
	unique uint64
	nodeid uint64
	body   []byte // after the header, exactly len-40 bytes
}

// errShort is returned for a message shorter than its opcode's structure.
var errShort = errors.New("fuse: message too short")

// parseRequest decodes the header of one message read from /dev/fuse. The
// kernel writes whole messages, but the length field is still checked
// against what was read.
func parseRequest(b []byte) (request, error) {
	if len(b) < inHeaderSize {
		return request{}, fmt.Errorf("%w: %d bytes, the header is %d", errShort, len(b), inHeaderSize)
	}
	n := binary.LittleEndian.Uint32(b[0:])
	if int64(n) != int64(len(b)) {
		return request{}, fmt.Errorf("fuse: header says %d bytes, read %d", n, len(b))
	}
	return request{
		opcode: binary.LittleEndian.Uint32(b[4:]),
		unique: binary.LittleEndian.Uint64(b[8:]),
		nodeid: binary.LittleEndian.Uint64(b[16:]),
		body:   b[inHeaderSize:],
	}, nil
}

// needsReply reports whether the kernel waits for an answer to opcode.
func needsReply(opcode uint32) bool {
	switch opcode {
	case opForget, opBatchForget, opInterrupt:
		return false
	}
	return true
}

// putHeader writes fuse_out_header for a reply of total bytes.
func putHeader(b []byte, total int, errno int32, unique uint64) {
	binary.LittleEndian.PutUint32(b[0:], uint32(total))
	binary.LittleEndian.PutUint32(b[4:], uint32(errno))
	binary.LittleEndian.PutUint64(b[8:], unique)
}

// attr is the part of fuse_attr we fill.
type attr struct {
	ino, size, blocks uint64
	mtime             uint64
	mode, nlink       uint32
	blksize           uint32
}

func putAttr(b []byte, a attr) {
	clear(b[:attrSize])
	le := binary.LittleEndian
	le.PutUint64(b[0:], a.ino)
	le.PutUint64(b[8:], a.size)
	le.PutUint64(b[16:], a.blocks)
	le.PutUint64(b[24:], a.mtime) // atime
	le.PutUint64(b[32:], a.mtime)
	le.PutUint64(b[40:], a.mtime) // ctime
	// atimensec, mtimensec, ctimensec stay zero
	le.PutUint32(b[60:], a.mode)
	le.PutUint32(b[64:], a.nlink)
	// uid, gid, rdev: 0 (root owns the disk)
	le.PutUint32(b[80:], a.blksize)
}
