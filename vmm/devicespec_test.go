package vmm

import (
	"strings"
	"testing"
)

func TestParseDrive(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want DriveConfig
		err  string
	}{
		{in: "id=rootfs,path=/r.ext4", want: DriveConfig{ID: "rootfs", Path: "/r.ext4"}},
		{in: "id=d,path=/d.img,readonly=true,root=on,direct=1", want: DriveConfig{ID: "d", Path: "/d.img", ReadOnly: true, Root: true, Direct: true}},
		{in: "id=d,volume=/vols/a,readonly=no", want: DriveConfig{ID: "d", Volume: "/vols/a"}},
		{in: "path=/r.ext4", err: "id= and one of path= and volume= are required"},
		{in: "id=d", err: "id= and one of path= and volume= are required"},
		{in: "id=d,path=/a,volume=/b", err: "id= and one of path= and volume= are required"},
		{in: "id=d,path=/a,readonly=maybe", err: `readonly="maybe" is not true or false`},
		{in: "id=d,path=/a,cache=unsafe", err: `unknown key "cache"`},
		{in: "id=d,path=/a,path=/b", err: "path given twice"},
		{in: "id=d,path=", err: `"path=" is not key=value`},
		{in: "id=d,/a", err: `"/a" is not key=value`},
		{in: "", err: "is not key=value"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseDrive(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "--drive") {
					t.Fatalf("ParseDrive(%q) = %+v, %v; want an error naming --drive and %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseDrive(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestParseVsock(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want VsockConfig
		err  string
	}{
		{in: "cid=3,uds=/run/v.sock", want: VsockConfig{GuestCID: 3, UDSPath: "/run/v.sock"}},
		{in: "uds=v.sock,cid=4294967294", want: VsockConfig{GuestCID: 4294967294, UDSPath: "v.sock"}},
		{in: "cid=3", err: "cid= and uds= are required"},
		{in: "uds=/v.sock", err: "cid= and uds= are required"},
		{in: "cid=x,uds=/v.sock", err: `cid="x" is not a number`},
		{in: "cid=-1,uds=/v.sock", err: `cid="-1" is not a number`},
		{in: "cid=4294967296,uds=/v.sock", err: "is not a number"},
		{in: "cid=2,uds=/v.sock", err: "out of range"},
		{in: "cid=4294967295,uds=/v.sock", err: "out of range"},
		{in: "cid=3,uds=@abstract", err: "abstract sockets are not supported"},
		{in: "cid=3,uds=/run/", err: "names a directory"},
		{in: "cid=3,uds=/" + strings.Repeat("x", 120), err: "a Unix socket path holds at most"},
		{in: "cid=3,uds=/v.sock,port=5", err: `unknown key "port"`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseVsock(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "--vsock") {
					t.Fatalf("ParseVsock(%q) = %+v, %v; want an error naming --vsock and %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseVsock(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}
