// Bridges the Verilated board image (ef_sim_top) to a pseudo-terminal: bytes the host writes to the
// pty's slave go bit by bit down the simulated UART line into the board; bytes the board sends come
// back up the other line and out to the host. The clock runs while a byte is on a line or the board
// works; otherwise the bridge sleeps in poll() until the host writes.
//
// SIGUSR1 power-cycles the board: reset, a new boot epoch, every register and the response cache lost.
//
// usage: ef_board_sim FD ENTROPY [CYCLES_FILE]
//   FD: the pty master, inherited; ENTROPY: seeds the boot epoch; CYCLES_FILE: where the clocks that
//   had a byte on a line or the board working are counted (rewritten whenever the bridge goes idle):
//   at CLKS_PER_BIT = 4 they are what a 12 MHz board at 3 Mbaud would spend.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <vector>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "Vef_sim_top.h"
#include "verilated.h"

static const int CYCLES_PER_ROUND = 4096;
static const uint64_t QUIET_CYCLES = 4096;   // idle clocks before the bridge sleeps (a byte is 40 clocks)
static const size_t MAX_QUEUED = 1 << 20;

static volatile sig_atomic_t power_cycle = 0;
static void on_power_cycle(int) { power_cycle = 1; }

static void tick(Vef_sim_top &top) {
    top.clk = 0;
    top.eval();
    top.clk = 1;
    top.eval();
}

int main(int argc, char **argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s PTY_MASTER_FD ENTROPY [CYCLES_FILE]\n", argv[0]);
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // the serving process owns the pty: stop with it
    const int fd = std::atoi(argv[1]);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);

    Verilated::commandArgs(argc, argv);
    Vef_sim_top top;
    uint32_t entropy = static_cast<uint32_t>(std::strtoul(argv[2], nullptr, 0));
    signal(SIGUSR1, on_power_cycle);
    auto boot = [&top, &entropy]() {
        top.entropy = entropy;
        top.host_valid = 0;
        top.rst = 1;
        for (int i = 0; i < 8; ++i) tick(top);
        top.rst = 0;
        entropy ^= entropy << 13;  // xorshift32: the next boot's draw
        entropy ^= entropy >> 17;
        entropy ^= entropy << 5;
    };
    boot();

    std::deque<uint8_t> to_board;
    std::vector<uint8_t> to_host;
    uint64_t quiet = 0, active = 0, reported = 0;
    const char *cycles_file = argc > 3 ? argv[3] : nullptr;
    uint8_t buffer[4096];
    for (;;) {
        if (power_cycle) {
            power_cycle = 0;
            boot();
        }
        if (to_board.empty() && quiet > QUIET_CYCLES) {
            if (cycles_file && active != reported) {
                if (FILE *out = std::fopen(cycles_file, "w")) {
                    std::fprintf(out, "%llu\n", static_cast<unsigned long long>(active));
                    std::fclose(out);
                }
                reported = active;
            }
            pollfd waiting = {fd, static_cast<short>(POLLIN | (to_host.empty() ? 0 : POLLOUT)), 0};
            poll(&waiting, 1, 200);
        }
        while (to_board.size() < MAX_QUEUED) {
            const ssize_t n = read(fd, buffer, sizeof buffer);
            if (n > 0) {
                to_board.insert(to_board.end(), buffer, buffer + n);
                quiet = 0;
            } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                return 0;  // the pty is gone
            } else break;
        }
        for (int i = 0; i < CYCLES_PER_ROUND; ++i) {
            top.host_valid = !to_board.empty();
            top.host_data = to_board.empty() ? 0 : to_board.front();
            top.clk = 0;
            top.eval();
            const bool taken = top.host_valid && top.host_ready;
            top.clk = 1;
            top.eval();
            if (taken) to_board.pop_front();
            if (top.board_valid) to_host.push_back(top.board_data);
            const bool busy = top.active || !to_board.empty();
            quiet = busy ? 0 : quiet + 1;
            active += busy;
        }
        size_t sent = 0;
        while (sent < to_host.size()) {
            const ssize_t n = write(fd, to_host.data() + sent, to_host.size() - sent);
            if (n > 0) sent += n;
            else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;  // the host reads later
            else if (n < 0 && errno != EINTR) return 0;
        }
        to_host.erase(to_host.begin(), to_host.begin() + sent);
    }
}
