SUMMARY = "VMI certificate exchange: SignCSR for the HMC through the hypervisor's CA"
DESCRIPTION = "D-Bus service owning /xyz/openbmc_project/HMC/VMInterface: validates a \
management console's CSR, carries it to the POWER hypervisor through pldmd, verifies the \
answer and returns the client certificate followed by the root CA certificate."
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# What this recipe has been checked against: the meson wrapper it drives (meson setup,
# compile, install with -Dtarget_triple, -Doffline and the unit/policy directories) builds
# and installs on Debian 12 with cargo's crates fetched beforehand, and the -crates.inc is
# generated from Cargo.lock. Unverified, because no bitbake build can run there: the
# SRC_URI/S layout of your poky release, cargo_common's vendored-crate configuration
# combined with the meson class, the Rust cross toolchain dependencies and openssl-sys
# finding the target's OpenSSL through pkg-config.

# Set these to where your copy of the repository lives (or build a local checkout with
# INHERIT += "externalsrc" and EXTERNALSRC:pn-vmi-cert-exchange = "/path/to/checkout").
VMI_CERT_EXCHANGE_URI ??= "git://git.example.com/vmi-cert-exchange.git;protocol=https;branch=main"
SRC_URI = "${VMI_CERT_EXCHANGE_URI}"
# No floating default: the -crates.inc below lists the crates of one Cargo.lock, and the build
# is --locked --offline, so SRCREV must name the commit that this layer came from. Set
# SRCREV:pn-vmi-cert-exchange in local.conf or your machine layer.
SRCREV ?= "0000000000000000000000000000000000000000"
PV = "0.1.0+git"
S = "${UNPACKDIR}/git"

require vmi-cert-exchange-crates.inc

inherit meson cargo_common rust-target-config pkgconfig systemd

# Cargo.toml is one level above the meson project.
MESON_SOURCEPATH = "${S}/meson-wrapper"

# As cargo.bbclass does for a cargo recipe: the compiler and the target's std.
BASEDEPENDS:append = " cargo-native"
DEPENDS:append:class-target = " rust-native ${RUSTLIB_DEP}"
DEPENDS += "openssl"

EXTRA_OEMESON += " \
    -Dtarget_triple=${RUST_HOST_SYS} \
    -Dprofile=${@['release', 'debug'][d.getVar('DEBUG_BUILD') == '1']} \
    -Doffline=true \
    -Dtests=false \
    -Dsystemd_system_unit_dir=${systemd_system_unitdir} \
    -Ddbus_policy_dir=${datadir}/dbus-1/system.d \
"

# QEMU and development images without a hypervisor: sign with the software CA instead.
PACKAGECONFIG ??= ""
PACKAGECONFIG[emulator] = "-Dtransport=emulator,-Dtransport=pldm"

# Both classes export do_configure: cargo's writes CARGO_HOME/config (crates from the
# bitbake download directory, linkers per triple), meson's configures the wrapper.
do_configure() {
    cargo_common_do_configure
    meson_do_configure
}

do_compile:prepend() {
    export RUSTFLAGS="${RUSTFLAGS}"
}

SYSTEMD_SERVICE:${PN} = "xyz.openbmc_project.HMC.VMInterface.service"
FILES:${PN} += " \
    ${datadir}/dbus-1/system.d/xyz.openbmc_project.HMC.VMInterface.conf \
    ${datadir}/phosphor-dbus-yaml \
"

# This service takes over bmc-vmi-ca's role (entries under /xyz/openbmc_project/certs/ca
# for pldmd); the two must not run together. The unit says Conflicts=bmc-vmi-ca-manager.service;
# also drop bmc-vmi-ca from the image, in local.conf or your machine layer:
#   PACKAGECONFIG:remove:pn-phosphor-certificate-manager = "ibm-hypervisor-cert"
