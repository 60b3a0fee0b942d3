package volumes

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"
)

// NBD protocol values the probe needs
// (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).
const (
	nbdMagic        = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic     = 0x49484156454F5054 // "IHAVEOPT"
	nbdRepMagic     = 0x0003e889045565a9
	nbdRequestMagic = 0x25609513
	nbdReplyMagic   = 0x67446698

	nbdFlagFixedNewstyle = 1 << 0
	nbdFlagNoZeroes      = 1 << 1

	nbdOptGo      = 7
	nbdRepAck     = 1
	nbdRepInfo    = 3
	nbdInfoExport = 0

	nbdFlagSendFUA = 1 << 3
	nbdFlagRO      = 1 << 1

	nbdCmdRead    = 0
	nbdCmdWrite   = 1
	nbdCmdDisc    = 2
	nbdCmdFlush   = 3
	nbdCmdFlagFUA = 1 << 0

	// probeBytes is how much the probe reads and writes back: one sector.
	probeBytes = 512
)

// nbdProbe connects to the NBD export (the default one, name "") on the
// unix socket path, reads the first sector and writes the same bytes back,
// durably (FUA, or a flush). Through a qemu-storage-daemon this is the
// write that makes the daemon's librbd client take the image's exclusive
// lock; the data is unchanged. It must only run while nothing else writes
// to the image (see [DaemonAttacher]).
func nbdProbe(ctx context.Context, path string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	size, flags, err := nbdHandshake(c)
	if err != nil {
		return fmt.Errorf("NBD handshake: %w", err)
	}
	if flags&nbdFlagRO != 0 {
		return fmt.Errorf("the NBD export is read-only")
	}
	if size < probeBytes {
		return fmt.Errorf("the NBD export has %d bytes, fewer than one sector", size)
	}
	buf := make([]byte, probeBytes)
	if err := nbdRequest(c, nbdCmdRead, 0, 1, 0, nil, buf); err != nil {
		return fmt.Errorf("read the first sector: %w", err)
	}
	if flags&nbdFlagSendFUA != 0 {
		err = nbdRequest(c, nbdCmdWrite, nbdCmdFlagFUA, 2, 0, buf, nil)
	} else if err = nbdRequest(c, nbdCmdWrite, 0, 2, 0, buf, nil); err == nil {
		err = nbdRequest(c, nbdCmdFlush, 0, 3, 0, nil, nil)
	}
	if err != nil {
		return fmt.Errorf("write the first sector back: %w", err)
	}
	_ = nbdRequest(c, nbdCmdDisc, 0, 4, 0, nil, nil) // no reply
	return nil
}

// nbdHandshake runs the fixed-newstyle handshake with NBD_OPT_GO for the
// default export and returns its size and transmission flags.
func nbdHandshake(c io.ReadWriter) (size uint64, flags uint16, err error) {
	be := binary.BigEndian
	var hello struct {
		Magic, OptMagic uint64
		Flags           uint16
	}
	if err := binary.Read(c, be, &hello); err != nil {
		return 0, 0, err
	}
	if hello.Magic != nbdMagic || hello.OptMagic != nbdOptMagic || hello.Flags&nbdFlagFixedNewstyle == 0 {
		return 0, 0, fmt.Errorf("not a fixed-newstyle NBD server (%+v)", hello)
	}
	// Client flags, then NBD_OPT_GO: name length 0 (the default export),
	// no information requests.
	var req bytes.Buffer
	_ = binary.Write(&req, be, uint32(nbdFlagFixedNewstyle|nbdFlagNoZeroes))
	_ = binary.Write(&req, be, uint64(nbdOptMagic))
	_ = binary.Write(&req, be, uint32(nbdOptGo))
	_ = binary.Write(&req, be, uint32(6))
	_ = binary.Write(&req, be, uint32(0))
	_ = binary.Write(&req, be, uint16(0))
	if _, err := c.Write(req.Bytes()); err != nil {
		return 0, 0, err
	}
	for {
		var rep struct {
			Magic    uint64
			Opt, Typ uint32
			Len      uint32
		}
		if err := binary.Read(c, be, &rep); err != nil {
			return 0, 0, err
		}
		if rep.Magic != nbdRepMagic || rep.Len > 1<<16 {
			return 0, 0, fmt.Errorf("bad option reply %+v", rep)
		}
		data := make([]byte, rep.Len)
		if _, err := io.ReadFull(c, data); err != nil {
			return 0, 0, err
		}
		switch {
		case rep.Typ&(1<<31) != 0:
			return 0, 0, fmt.Errorf("the server refused the default export: error %#x %q", rep.Typ, data)
		case rep.Typ == nbdRepInfo && len(data) >= 12 && be.Uint16(data) == nbdInfoExport:
			size, flags = be.Uint64(data[2:]), be.Uint16(data[10:])
		case rep.Typ == nbdRepAck:
			return size, flags, nil
		}
	}
}

// nbdRequest sends one request and reads its simple reply: write sends
// data, read fills into.
func nbdRequest(c io.ReadWriter, typ, flags uint16, handle, off uint64, data, into []byte) error {
	be := binary.BigEndian
	n := len(data) + len(into)
	h := make([]byte, 28, 28+len(data))
	be.PutUint32(h[0:], nbdRequestMagic)
	be.PutUint16(h[4:], flags)
	be.PutUint16(h[6:], typ)
	be.PutUint64(h[8:], handle)
	be.PutUint64(h[16:], off)
	be.PutUint32(h[24:], uint32(n))
	if _, err := c.Write(append(h, data...)); err != nil {
		return err
	}
	if typ == nbdCmdDisc {
		return nil
	}
	var rep struct {
		Magic, Errno uint32
		Handle       uint64
	}
	if err := binary.Read(c, be, &rep); err != nil {
		return err
	}
	if rep.Magic != nbdReplyMagic || rep.Handle != handle {
		return fmt.Errorf("bad reply %+v to request %d", rep, handle)
	}
	if rep.Errno != 0 {
		return fmt.Errorf("the server answered error %d (%s)", rep.Errno, errnoName(rep.Errno))
	}
	if into != nil {
		if _, err := io.ReadFull(c, into); err != nil {
			return err
		}
	}
	return nil
}

// errnoName names the NBD error values (Linux errno numbers).
func errnoName(e uint32) string {
	switch e {
	case 1:
		return "EPERM"
	case 5:
		return "EIO"
	case 12:
		return "ENOMEM"
	case 22:
		return "EINVAL"
	case 28:
		return "ENOSPC"
	case 108:
		return "ESHUTDOWN: the Ceph client was blocklisted"
	}
	return "errno"
}
