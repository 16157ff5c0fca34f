/// The callbacks of nbdkit's C plugin interface, in the order `nbdkit --dump-plugin` lists them.
/// A built-in plugin names the ones whose behaviour it provides, so that `--dump-plugin` prints
/// the same `has_NAME=1` lines as nbdkit's plugin of that name (scripts test for them).
public enum PluginCallback: String, CaseIterable, Sendable {
    case longname, unload, dumpPlugin = "dump_plugin", config, configComplete = "config_complete"
    case configHelp = "config_help", threadModel = "thread_model", getReady = "get_ready"
    case afterFork = "after_fork", cleanup, preconnect, listExports = "list_exports"
    case defaultExport = "default_export", exportDescription = "export_description"
    case open, close, getSize = "get_size", blockSize = "block_size", canWrite = "can_write"
    case canFlush = "can_flush", isRotational = "is_rotational", canTrim = "can_trim"
    case canZero = "can_zero", canFastZero = "can_fast_zero", canExtents = "can_extents"
    case canFUA = "can_fua", canMultiConn = "can_multi_conn", canCache = "can_cache"
    case pread, pwrite, flush, trim, zero, extents, cache
}
