module github.com/sovereign-stack/ssbuild

go 1.26.8
