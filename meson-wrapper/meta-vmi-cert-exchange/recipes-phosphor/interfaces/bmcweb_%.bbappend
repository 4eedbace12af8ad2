# vmi-cert-exchange is reached through bmcweb's generic D-Bus REST API
# (POST /xyz/openbmc_project/HMC/VMInterface/action/SignCSR), which bmcweb
# builds only with -Drest=enabled.
PACKAGECONFIG:append = " dbus-rest"

# bmcweb from 76c2ad6444 (2026-01-30) on answers every method call that takes
# an argument with 400 "Invalid method arg type". The patch fixes that.
# It was checked against bmcweb 7debb8928f only. The file it changes is the
# same from 8176ae6778 (2026-07-01) on. Your image may use a different SRCREV.
# To check it:
#   bitbake-getvar -r bmcweb SRCREV      (or: bitbake -e bmcweb | grep ^SRCREV=)
# Drop the patch if SRCREV comes before 76c2ad6444 or bmcweb carries a fix.
# Between 76c2ad6444 and 8176ae6778 it applies only with fuzz, which OE's
# patch-fuzz QA check refuses: refresh it against that SRCREV.
FILESEXTRAPATHS:prepend := "${THISDIR}/bmcweb:"
SRC_URI += "file://0001-openbmc_rest-pass-method-arguments-from-data-again.patch"
