// STUB until scripts/make-example1.sh runs.
enum Example1Image {
    static let size: UInt64 = 1048576
    static let runs: [(offset: UInt64, hex: String)] = [(0, "eb63")]
}
