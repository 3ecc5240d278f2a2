# dst: top-level build.  See README.md.
KDIR ?= $(shell scripts/build-kernel.sh test | tail -1)
RUSTC := /usr/bin/rustc

.PHONY: module
module:
	$(MAKE) -C $(KDIR) M=$(CURDIR) RUSTC=$(RUSTC) HOSTRUSTC=$(RUSTC) modules
