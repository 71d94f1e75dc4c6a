@echo off
rem Cloud Foundry's Windows builder runs bin\detect.bat when it auto-detects. Like bin/detect,
rem this buildpack never claims an app (and it is for Linux stacks only): quietly no.
exit /b 1
