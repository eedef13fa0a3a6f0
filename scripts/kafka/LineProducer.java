// Kafka's own Java producer, for tests that need records written by a client other than
// kafka-python (e.g. compressed with snappy, lz4 or zstd by the Java codecs). Run in
// source-file mode, no build step:
//   java -cp '.kafka/libs/*' scripts/kafka/LineProducer.java BOOTSTRAP TOPIC COMPRESSION < lines
// Sends each line of standard input as one record value (no key), then flushes and exits.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;

public class LineProducer {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("compression.type", args[2]);
        props.put("linger.ms", "50");
        props.put("key.serializer", "org.apache.kafka.common.serialization.ByteArraySerializer");
        props.put("value.serializer", "org.apache.kafka.common.serialization.ByteArraySerializer");
        int n = 0;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props);
             BufferedReader in = new BufferedReader(
                 new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            String line;
            while ((line = in.readLine()) != null) {
                producer.send(new ProducerRecord<>(args[1], line.getBytes(StandardCharsets.UTF_8)));
                n++;
            }
            producer.flush();
        }
        System.out.println(n);
    }
}
