//go:build ignore

/*
 * floor-exec-c: a statically linked C program that does nothing. Its exec →
 * exit is this machine's floor for starting any process: the kernel's exec
 * and exit plus glibc's static start-up, no dynamic loader. Built by
 * bench/floor/build.sh; the line above keeps Go's tooling out of it.
 */
int main(void)
{
	return 0;
}
