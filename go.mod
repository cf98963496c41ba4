module github.com/voltvmm/volt

go 1.26.8
