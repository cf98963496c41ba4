package voltinit

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestSplitKernelCmdline(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  console=ttyS0   quiet\n", []string{"console=ttyS0", "quiet"}},
		{`volt.run="sh -c 'echo hi'" ro`, []string{`volt.run=sh -c 'echo hi'`, "ro"}},
		{`"volt.run=a b" x`, []string{"volt.run=a b", "x"}},
		{`a="" b`, []string{"a=", "b"}},
		{`k=v"w x"y z`, []string{`k=v"w x"y`, "z"}}, // kernel keeps inner quotes
		{`unterminated="a b`, []string{"unterminated=a b"}},
		{`root=/dev/vda -- volt.run=sh`, []string{"root=/dev/vda"}},
		{`a "--" b`, []string{"a"}}, // parse_args compares after next_arg removed the quotes
		{`a --=x "--=y" b`, []string{"a", "--=x", "--=y", "b"}},
	}
	for _, tt := range tests {
		if got := SplitKernelCmdline(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("SplitKernelCmdline(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestSplitCommand(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"", nil, ""},
		{"   ", nil, ""},
		{"/bin/app --port 80", []string{"/bin/app", "--port", "80"}, ""},
		{`sh -c 'echo "a  b"; exit 3'`, []string{"sh", "-c", `echo "a  b"; exit 3`}, ""},
		{`echo "x \"y\" \$z \n"`, []string{"echo", `x "y" $z \n`}, ""},
		{`a\ b c\'d`, []string{"a b", "c'd"}, ""},
		{`'' ""`, []string{"", ""}, ""},
		{`pre'mid'"post"`, []string{"premidpost"}, ""},
		{`'open`, nil, "unterminated single quote"},
		{`"open`, nil, "unterminated double quote"},
		{`"ends\`, nil, "unterminated double quote"},
		{`x\`, nil, "trailing backslash"},
	}
	for _, tt := range tests {
		got, err := SplitCommand(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("SplitCommand(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("SplitCommand(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		want     Config
		warnings int
		wantErr  string
	}{
		{name: "none", in: "console=ttyS0 reboot=k panic=1"},
		{
			name: "all",
			in: `console=ttyS0 volt.run="/usr/bin/python3 -m http.server 'my dir'" volt.ip=172.16.0.2/24 ` +
				`volt.gw=172.16.0.1 volt.hostname=vm-7.local volt.env=A=1 volt.env=B=x=y`,
			want: Config{
				Run:      []string{"/usr/bin/python3", "-m", "http.server", "my dir"},
				Addr:     netip.MustParsePrefix("172.16.0.2/24"),
				Gateway:  netip.MustParseAddr("172.16.0.1"),
				Hostname: "vm-7.local",
				Env:      []string{"A=1", "B=x=y"},
			},
		},
		{name: "ipv6", in: "volt.ip=fd00::2/64 volt.gw=fd00::1", want: Config{
			Addr: netip.MustParsePrefix("fd00::2/64"), Gateway: netip.MustParseAddr("fd00::1"),
		}},
		{name: "last wins", in: "volt.run=a volt.run=b volt.hostname=x volt.hostname=y", want: Config{
			Run: []string{"b"}, Hostname: "y",
		}},
		{name: "unknown keys warn", in: "volt.foo=1 volt.bar volt. volt.run=x", want: Config{Run: []string{"x"}}, warnings: 3},
		{name: "prefix must match exactly", in: "voltage=3 xvolt.run=x"},
		{name: "empty run", in: `volt.run=""`, wantErr: "volt.run: empty command"},
		{name: "run without value", in: "volt.run", wantErr: "volt.run: needs a value"},
		{name: "run quote", in: `volt.run="sh -c 'x"`, wantErr: "unterminated single quote"},
		{name: "ip without prefix", in: "volt.ip=10.0.0.2", wantErr: "volt.ip: \"10.0.0.2\" is not ADDR/PREFIX"},
		{name: "ip garbage", in: "volt.ip=eth0", wantErr: "volt.ip"},
		{name: "ip prefix too long", in: "volt.ip=10.0.0.2/33", wantErr: "volt.ip"},
		{name: "ip multicast", in: "volt.ip=224.0.0.1/4", wantErr: "cannot be an interface address"},
		{name: "gw garbage", in: "volt.ip=10.0.0.2/24 volt.gw=10.0.0", wantErr: "volt.gw: \"10.0.0\" is not an IP address"},
		{name: "gw without ip", in: "volt.gw=10.0.0.1", wantErr: "volt.gw: needs volt.ip"},
		{name: "gw family", in: "volt.ip=10.0.0.2/24 volt.gw=fd00::1", wantErr: "different families"},
		{name: "hostname chars", in: "volt.hostname=a_b", wantErr: "volt.hostname"},
		{name: "hostname long", in: "volt.hostname=" + strings.Repeat("a", 65), wantErr: "1 to 64"},
		{name: "hostname dash", in: "volt.hostname=-a", wantErr: "volt.hostname"},
		{name: "env no equals", in: "volt.env=FOO", wantErr: `volt.env: "FOO" is not K=V`},
		{name: "env empty key", in: "volt.env==x", wantErr: "volt.env"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, warnings, err := ParseCmdline(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				if !errors.Is(err, ErrParam) {
					t.Fatalf("error %v does not wrap ErrParam", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("config = %+v, want %+v", got, tt.want)
			}
			if len(warnings) != tt.warnings {
				t.Errorf("warnings = %q, want %d", warnings, tt.warnings)
			}
		})
	}
}

func FuzzParseCmdline(f *testing.F) {
	for _, s := range []string{
		"console=ttyS0 reboot=k panic=1 pci=off",
		`volt.run="sh -c 'echo hi; exit 3'" volt.ip=172.16.0.2/24 volt.gw=172.16.0.1`,
		`"volt.run=a b" volt.env=A=1 volt.env=B=2 volt.hostname=vm -- volt.run=x`,
		`volt.run="x \" volt.ip=fd00::1/64 volt.bogus`,
		"volt.run=\\",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cfg, _, err := ParseCmdline(s)
		if err != nil {
			if !errors.Is(err, ErrParam) {
				t.Fatalf("error %v does not wrap ErrParam", err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted config fails Validate: %v", err)
		}
		if cfg.Run != nil && len(cfg.Run) == 0 {
			t.Fatal("non-nil empty command accepted")
		}
		for _, kv := range cfg.Env {
			if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
				t.Fatalf("env entry %q accepted", kv)
			}
		}
		if cfg.Hostname != "" && checkHostname(cfg.Hostname) != nil {
			t.Fatalf("hostname %q accepted", cfg.Hostname)
		}
	})
}
