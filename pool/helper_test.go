package pool

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	pc "github.com/voltvmm/volt/pool/client"
)

// helperEnv makes the test binary a pool client: "release|renew SOCKET ID"
// (run under another uid by tests of lease ownership). It prints the HTTP
// status and message and exits 0 if the call succeeded.
const helperEnv = "VOLTPOOL_TEST_HELPER"

func runHelper(spec string) int {
	f := strings.Fields(spec)
	if len(f) != 3 {
		fmt.Println("bad helper spec", spec)
		return 2
	}
	c := pc.New(f[1])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	switch f[0] {
	case "release":
		err = c.Release(ctx, f[2])
	case "renew":
		_, err = c.Renew(ctx, f[2], time.Minute)
	default:
		fmt.Println("bad helper op", f[0])
		return 2
	}
	if err != nil {
		fmt.Printf("%d %v\n", pc.StatusOf(err), err)
		return 1
	}
	fmt.Fprintln(os.Stdout, "ok")
	return 0
}
