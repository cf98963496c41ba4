package boot

import (
	"errors"
	"strings"
	"testing"
)

func TestCmdline(t *testing.T) {
	type op struct {
		raw        bool
		key, value string
		err        error
	}
	tests := []struct {
		name string
		max  int
		ops  []op
		want string
	}{
		{"key value", 100, []op{{key: "console", value: "ttyS0"}, {key: "panic", value: "-1"}}, "console=ttyS0 panic=-1"},
		{"flag", 100, []op{{key: "quiet"}, {key: "ro"}}, "quiet ro"},
		{"quoted", 100, []op{{key: "init.args", value: "a b c"}}, `init.args="a b c"`},
		{"raw then append", 100, []op{{raw: true, key: "console=ttyS0 reboot=k"}, {key: "x", value: "1"}}, "console=ttyS0 reboot=k x=1"},
		{"raw empty adds nothing", 100, []op{{raw: true}, {key: "a", value: "b"}}, "a=b"},
		{"exactly at limit", 9, []op{{key: "abc", value: "1"}, {key: "def"}}, "abc=1 def"},
		{"one over limit", 8, []op{{key: "abc", value: "1"}, {key: "def", err: ErrCmdlineTooLong}}, "abc=1"},
		{"zero limit", 0, []op{{key: "a", err: ErrCmdlineTooLong}}, ""},
		{"NUL in value", 100, []op{{key: "a", value: "b\x00c", err: ErrCmdlineInvalid}}, ""},
		{"NUL raw", 100, []op{{raw: true, key: "a\x00", err: ErrCmdlineInvalid}}, ""},
		{"newline", 100, []op{{raw: true, key: "a\nb", err: ErrCmdlineInvalid}}, ""},
		{"UTF-8", 100, []op{{key: "name", value: "é", err: ErrCmdlineInvalid}}, ""},
		{"quote in value", 100, []op{{key: "a", value: `b"c`, err: ErrCmdlineInvalid}}, ""},
		{"space in key", 100, []op{{key: "a b", value: "c", err: ErrCmdlineInvalid}}, ""},
		{"equals in key", 100, []op{{key: "a=b", value: "c", err: ErrCmdlineInvalid}}, ""},
		{"empty key", 100, []op{{key: "", value: "c", err: ErrCmdlineInvalid}}, ""},
		{"unbalanced raw quote", 100, []op{{raw: true, key: `a="b`, err: ErrCmdlineInvalid}}, ""},
		{"failed op leaves line intact", 100, []op{{key: "a", value: "1"}, {key: "b c", err: ErrCmdlineInvalid}, {key: "d", value: "2"}}, "a=1 d=2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCmdline(tt.max)
			for _, o := range tt.ops {
				var err error
				if o.raw {
					err = c.AppendRaw(o.key)
				} else {
					err = c.Append(o.key, o.value)
				}
				if !errors.Is(err, o.err) {
					t.Fatalf("op %+v: error %v, want %v", o, err, o.err)
				}
			}
			if c.String() != tt.want || c.Len() != len(tt.want) {
				t.Errorf("got %q (len %d), want %q", c.String(), c.Len(), tt.want)
			}
			z := c.bytesZ()
			if len(z) != c.Len()+1 || z[len(z)-1] != 0 || strings.IndexByte(string(z[:len(z)-1]), 0) >= 0 {
				t.Errorf("bytesZ = %q: want the line and one trailing NUL", z)
			}
		})
	}
}
