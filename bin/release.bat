@echo off
rem Cloud Foundry's Windows builder runs bin\release.bat. This buildpack is for Linux stacks only:
rem its sidecar is a static Linux binary, so a Windows app gets a clear refusal instead of
rem "does not support multi-buildpack apps".
echo        **ERROR** The TLS sidecar buildpack supports Linux stacks only (cflinuxfs3, cflinuxfs4, cflinuxfs5): its sidecar is a Linux binary. Fix: remove tls_sidecar_buildpack from the buildpacks of this Windows app 1>&2
exit /b 1
